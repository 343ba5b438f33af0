"""Run by test_distribution.py in a fresh process (logical devices must be set before TF
starts): detections of a tiny detector for 3 images under MirroredStrategy over two logical
CPUs (`replica_detect`: network + NMS per replica inside strategy.run) and on one device for
the same per-replica parts; prints the differences and the replicas that ran as JSON."""
import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=import-error
from detlab.detection.losses import DetectionLoss  # noqa: E402
from detlab.detection.postprocess import PostprocessConfig  # noqa: E402
from detlab.models.efficientdet import efficientdet  # noqa: E402
from detlab.tasks.detection import DetectionTask  # noqa: E402
from detlab.training.evaluation import replica_detect  # noqa: E402


def main():
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  keras.utils.set_random_seed(0)
  with mirrored.scope():
    model = efficientdet(tiny_test_backbone, num_classes=3, image_size=64, max_level=5,
                         fpn_width=16, fpn_cells=1, head_repeats=1)
  task = DetectionTask(model, DetectionLoss(), PostprocessConfig())
  replicas = []

  def recording_detect(images):
    replicas.append(tf.distribute.get_replica_context().replica_id_in_sync_group)
    return task.detect(images)

  images = tf.constant(np.random.RandomState(0).normal(size=[3, 64, 64, 3]), tf.float32)
  distributed = {k: v.numpy() for k, v in replica_detect(mirrored, recording_detect)(
      images).items()}
  # One device, the same parts the replicas got (2 + 2 with one padding image), in order.
  padded = tf.concat([images, tf.zeros_like(images[:1])], axis=0)
  parts = [task.detect(padded[:2]), task.detect(padded[2:])]
  single = {k: np.concatenate([p[k].numpy() for p in parts])[:3] for k in distributed}
  print(json.dumps({
      "keys": sorted(distributed), "shapes_equal": all(
          distributed[k].shape == single[k].shape for k in single),
      "max_diff": {k: float(np.max(np.abs(distributed[k].astype(np.float64) -
                                          single[k].astype(np.float64)))) for k in single},
      "num_detections": distributed["num_detections"].tolist(),
      "replicas": sorted({int(tf.get_static_value(r)) for r in replicas})}))


if __name__ == "__main__":
  main()
