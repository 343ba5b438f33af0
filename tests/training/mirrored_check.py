"""Run by test_distribution.py in a fresh process (logical devices must be set before TF
starts): 2 steps of a tiny detector at global batch 4 under the default strategy and under
MirroredStrategy over two logical CPUs; prints the largest weight difference as JSON."""
import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from replica_training import global_batch, max_abs_diff, train  # noqa: E402  pylint: disable=import-error


def _whole_batch(batch):
  return lambda strategy: strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(batch).repeat())


def main():
  batch = global_batch()
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert mirrored.num_replicas_in_sync == 2
  single_w, single_ema, single_loss, initial = train(tf.distribute.get_strategy(),
                                                     _whole_batch(batch))
  multi_w, multi_ema, multi_loss, multi_initial = train(mirrored, _whole_batch(batch))
  assert all(np.array_equal(a, b) for a, b in zip(initial, multi_initial))
  print(json.dumps({"max_weight_diff": max_abs_diff(single_w, multi_w),
                    "max_ema_diff": max_abs_diff(single_ema, multi_ema),
                    "max_weight": max(float(np.max(np.abs(a))) for a in single_w),
                    "max_update": max_abs_diff(single_w, initial),
                    "loss_single": single_loss, "loss_mirrored": multi_loss}))


if __name__ == "__main__":
  main()
