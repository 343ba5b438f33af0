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
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=wrong-import-position
from detlab.benchmark import synthetic_train_batch  # noqa: E402
from detlab.detection.losses import DetectionLoss  # noqa: E402
from detlab.models.efficientdet import efficientdet  # noqa: E402
from detlab.training.ema import EmaConfig, WeightAverage  # noqa: E402
from detlab.training.loop import Trainer  # noqa: E402

GLOBAL_BATCH, STEPS = 4, 2


def per_image_mean_loss(model, batch, training):
  """DetectionLoss per image, averaged: a per-example mean, so that replicas / num_replicas
  equals the global batch (DetectionLoss itself normalizes by the replica's positives)."""
  loss = DetectionLoss()
  class_outputs, box_outputs = model(batch["images"], training=training)
  cls, box = model.flatten_outputs(class_outputs, box_outputs)
  size = cls.shape[0]
  parts = [loss(cls[i:i + 1], box[i:i + 1], batch["cls_targets"][i:i + 1],
                batch["box_targets"][i:i + 1]) for i in range(size)]
  return {k: tf.add_n([p[k] for p in parts]) / size for k in ("total", "class", "box")}


def train(strategy, batch):
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = efficientdet(tiny_test_backbone, num_classes=3, image_size=64, max_level=5,
                         fpn_width=16, fpn_cells=1, head_repeats=1, sync_bn=True)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    average = WeightAverage(model, EmaConfig(decay=0.5, dynamic_decay=False))
  initial = [v.numpy() for v in model.variables]
  trainer = Trainer(strategy, model, optimizer, per_image_mean_loss, 4e-5, 10.0, ema=average)
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(batch).repeat())
  trainer.train_steps(iter(dataset), tf.constant(STEPS))
  return ([v.numpy() for v in model.variables], [v.numpy() for v in average.shadows],
          trainer.results()["total"], initial)


def main():
  keras.utils.set_random_seed(0)
  probe = efficientdet(tiny_test_backbone, num_classes=3, image_size=64, max_level=5)
  batch = synthetic_train_batch(probe, GLOBAL_BATCH)
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  assert mirrored.num_replicas_in_sync == 2
  single_w, single_ema, single_loss, initial = train(tf.distribute.get_strategy(), batch)
  multi_w, multi_ema, multi_loss, multi_initial = train(mirrored, batch)
  assert all(np.array_equal(a, b) for a, b in zip(initial, multi_initial))
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, initial))
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, multi_w))
  ema_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(single_ema, multi_ema))
  scale = max(float(np.max(np.abs(a))) for a in single_w)
  print(json.dumps({"max_weight_diff": diff, "max_ema_diff": ema_diff, "max_weight": scale,
                    "max_update": moved,
                    "loss_single": single_loss, "loss_mirrored": multi_loss}))


if __name__ == "__main__":
  main()
