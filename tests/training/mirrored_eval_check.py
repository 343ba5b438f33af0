"""Run by test_distribution.py in a fresh process (logical devices must be set before TF
starts): every task's evaluation through the one evaluation loop (training/evaluation.py:
`evaluate`) under MirroredStrategy over two logical CPUs and under the default strategy, on
the same model and batches; prints each task's metrics both ways, the replicas that ran
predict, and the batches' sizes, as JSON.

Batches of 3 images on 2 replicas: every batch is padded and split (2 + 2). The detection
ground truth is half made of the model's own best detections, so AP is far from 0 and a
replica that mixed up images would change it."""
import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=import-error
import learning_backbone  # noqa: E402  pylint: disable=import-error  (registers its classifier)
from detlab.models.classifier import classifier  # noqa: E402
from detlab.models.efficientdet import efficientdet  # noqa: E402
from detlab.models.joint import joint_detector_segmenter  # noqa: E402
from detlab.models.segmentation import segmenter  # noqa: E402
from detlab.tasks.classification import ClassificationTask  # noqa: E402
from detlab.tasks.detection import DetectionTask  # noqa: E402
from detlab.tasks.joint import JointTask  # noqa: E402
from detlab.tasks.segmentation import SegmentationTask  # noqa: E402
from detlab.training.evaluation import evaluate  # noqa: E402

SIZE, BATCH, BATCHES, CLASSES, SEG_CLASSES = 64, 3, 3, 3, 4
DETECTOR = {"image_size": SIZE, "max_level": 5, "fpn_width": 16, "fpn_cells": 1,
            "head_repeats": 1}


def _images(rng):
  return rng.normal(size=[BATCH, SIZE, SIZE, 3]).astype(np.float32)


def _image_info(rng):
  """Original sizes 80-128 px scaled into the 64-px input (tfm's layout)."""
  info = np.zeros([BATCH, 4, 2], np.float32)
  for i in range(BATCH):
    h, w = rng.randint(80, 129, size=2)
    scale = SIZE / max(h, w)
    info[i] = [[h, w], [h * scale, w * scale], [scale, scale], [0, 0]]
  return info


def _detection_batches(rng, predict=None):
  """Eval batches; with `predict` (the model's own detections), images 0 and 2 of every
  batch get its two best boxes as ground truth, the rest random boxes."""
  batches = []
  for b in range(BATCHES):
    batch = {"images": _images(rng), "image_info": _image_info(rng),
             "source_ids": np.array([str(b * BATCH + i + 1).encode() for i in range(BATCH)]),
             "gt_boxes": np.zeros([BATCH, 4, 4], np.float32),
             "gt_classes": np.zeros([BATCH, 4], np.int32),
             "gt_areas": np.zeros([BATCH, 4], np.float32),
             "gt_is_crowd": np.zeros([BATCH, 4], bool), "gt_count": np.full([BATCH], 2)}
    found = predict(batch) if predict else None
    for i in range(BATCH):
      if found is not None and i != 1:
        boxes, classes = found["boxes"][i, :2], found["classes"][i, :2]
      else:
        y, x = rng.uniform(0, 40, size=2)
        boxes = np.array([[y, x, y + 30, x + 30], [x, y, x + 20, y + 25]], np.float32)
        classes = rng.randint(0, CLASSES, size=2)
      batch["gt_boxes"][i, :2], batch["gt_classes"][i, :2] = boxes, classes
      batch["gt_areas"][i, :2] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    batches.append(batch)
  return batches


def _add_segmentation(batches, rng, classes):
  for batch in batches:
    labels = rng.randint(0, classes, size=[BATCH, 128, 128]).astype(np.int32)
    labels[:, :, 100:] = 255  # some ignore pixels
    batch["original_labels"] = labels
  return batches


def _tensors(batches):
  return [{k: tf.constant(v) for k, v in batch.items()} for batch in batches]


def _both_ways(task, model, batches, mirrored, seen):
  """metrics + extra under the mirrored and the default strategy; records replica ids."""
  predict = task.predict

  def recording(model_, features):
    seen.append(tf.distribute.get_replica_context().replica_id_in_sync_group)
    return predict(model_, features)
  task.predict = recording
  out = {}
  for name, strategy in (("mirrored", mirrored), ("default", tf.distribute.get_strategy())):
    metrics, extra = evaluate(task, model, _tensors(batches), strategy)
    out[name] = {"metrics": metrics, "extra": extra}
  task.predict = predict
  return out


def main():
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  rng = np.random.RandomState(0)
  results, seen = {}, []

  keras.utils.set_random_seed(0)
  with mirrored.scope():
    detector = efficientdet(tiny_test_backbone, num_classes=CLASSES, **DETECTOR)
  task = DetectionTask()
  own = tf.function(lambda f: task.predict(detector, f))
  batches = _detection_batches(rng, lambda batch: {k: v.numpy() for k, v in own(
      {"images": batch["images"], "image_info": batch["image_info"]}).items()})
  results["detection"] = _both_ways(task, detector, batches, mirrored, seen)

  keras.utils.set_random_seed(1)
  with mirrored.scope():
    net = classifier(learning_backbone.NAME, num_classes=CLASSES, image_size=SIZE)
  task = ClassificationTask(num_classes=CLASSES, image_size=SIZE, model_fn=None)
  batches = [{"images": _images(rng), "labels": rng.randint(0, CLASSES, size=BATCH)}
             for _ in range(BATCHES)]
  results["classification"] = _both_ways(task, net, batches, mirrored, seen)

  keras.utils.set_random_seed(2)
  with mirrored.scope():
    seg = segmenter(tiny_test_backbone, num_classes=SEG_CLASSES, image_size=SIZE,
                    fpn_width=16, fpn_cells=1, head_width=16, head_repeats=1, max_level=5)
  task = SegmentationTask(model_fn=None)
  batches = _add_segmentation([{"images": _images(rng), "image_info": _image_info(rng)}
                               for _ in range(BATCHES)], rng, SEG_CLASSES)
  results["segmentation"] = _both_ways(task, seg, batches, mirrored, seen)

  keras.utils.set_random_seed(3)
  with mirrored.scope():
    joint = joint_detector_segmenter(tiny_test_backbone, num_classes=CLASSES,
                                     num_seg_classes=SEG_CLASSES, fpn_width=16, fpn_cells=1,
                                     head_repeats=1, seg_head_width=16, seg_head_repeats=1,
                                     image_size=SIZE, max_level=5)
  task = JointTask(model_fn=None)
  own = tf.function(lambda f: task.predict(joint, f))
  batches = _add_segmentation(_detection_batches(rng, lambda batch: {
      k: v.numpy() for k, v in own({"images": batch["images"],
                                    "image_info": batch["image_info"]}).items()}),
                              rng, SEG_CLASSES)
  results["joint"] = _both_ways(task, joint, batches, mirrored, seen)

  print(json.dumps({"results": results,
                    "replicas": sorted({int(tf.get_static_value(r)) for r in seen})}))


if __name__ == "__main__":
  main()
