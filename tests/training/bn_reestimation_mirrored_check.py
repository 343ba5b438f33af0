"""Run by test_bn_reestimation.py in a fresh process (logical devices must be set before TF
starts): BN re-estimation of bn_nets.two_bn_net under MirroredStrategy over two logical
CPUs and under the default strategy, on the same global batches; writes the comparison as
JSON to argv[1]."""
import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bn_nets import SIZE, two_bn_net  # noqa: E402  pylint: disable=import-error
from detlab.layers.normalization import BatchNormalization  # noqa: E402
from detlab.training.bn_reestimation import BatchNormReestimator  # noqa: E402

BATCH, BATCHES = 4, 2


def main():
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with mirrored.scope():
    model = two_bn_net(0)
  rng = np.random.RandomState(0)
  # Each replica's half differs from the other (different means): per-replica moments
  # alone would not give the global batch's.
  batches = [{"images": tf.constant(np.concatenate([rng.normal(0.5, 2.0, [2, SIZE, SIZE, 3]),
                                                    rng.normal(-1.0, 1.0, [2, SIZE, SIZE, 3])]),
                                    tf.float32)} for _ in range(BATCHES)]
  results, replicas = [], []
  for strategy in (mirrored, tf.distribute.get_strategy()):
    reestimator = BatchNormReestimator(model, strategy)
    replicas.append(reestimator.replicas)
    results.append(reestimator.estimate(batches, BATCHES)["statistics"])
  layers = reestimator.layers
  worst, changed = 0.0, 0.0
  for index, (mean, variance) in results[1].items():
    other_mean, other_variance = results[0][index]
    for got, want in ((other_mean, mean), (other_variance, variance)):
      worst = max(worst, float(np.max(np.abs(got - want) / (np.abs(want) + 1e-3))))
    changed = max(changed, float(np.max(np.abs(mean - layers[index].moving_mean.numpy()))))
  used = [layers[i] for i in results[1]]
  with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump({"replicas": replicas, "layers": len(used),
               "stock": sum(not isinstance(layer, BatchNormalization) for layer in used),
               "detlab": sum(isinstance(layer, BatchNormalization) for layer in used),
               "max_relative_difference": worst, "changed": changed}, f)


if __name__ == "__main__":
  main()
