"""Perfect network outputs make AP 1: ground truth -> anchor targets -> the class logits and
box deltas that encode them, laid out as the heads emit them -> detlab's eval loop.

Everything between the annotations and the metric is detlab's own code: the training parser
(resize, class id -> index, AnchorTargetAssigner), the eval pipeline (resize/pad, image_info),
DetectionTask.detect (EfficientDet.flatten_outputs, postprocess with soft NMS),
DetectionTask.predict (boxes to original pixels), the evaluation loop, DetectionEvaluator and
CocoEvaluator against the annotation file.
Only the network is replaced, by outputs that put +10 on each anchor's assigned class (-10
elsewhere) and the assigned box targets as deltas, in the heads' layout {level: [B, h, w,
A*K]} / {level: [B, h, w, A*4]} (location-major, then anchor, then class or coordinate).

An anchor order that differs from the heads' layout, a y/x swap in coding or decoding, a
category id off by one, or a wrong resize scale when mapping back each move the boxes or
classes, and AP drops far below 1. The images have different sizes and aspect ratios (one
landscape, one portrait, one square, one wide) so the resize scale matters, and the category
ids are not contiguous (1, 4, 7 of 7 classes).
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.source_id import decode_source_ids
from detlab.data.tf_example import build_example, encode_png
from detlab.detection.anchors import AnchorConfig
from detlab.models.efficientdet import EfficientDet
from detlab.tasks.detection import DetectionTask
from detlab.training.evaluation import evaluate

NUM_CLASSES = 7
CATEGORIES = {1: "disc", 4: "bar", 7: "kite"}
IMAGE_SIZE = 128
BATCH = 2
LOGIT = 10.0  # sigmoid 0.99995 at the assigned class, 4.5e-5 (< the 0.001 floor) elsewhere
# image id -> (height, width, [(category id, COCO [x, y, w, h]), ...]) in original pixels
ANNOTATIONS = {
    11: (96, 160, [(1, [10.0, 8.0, 40.0, 30.0]), (4, [90.0, 20.0, 60.0, 25.0]),
                   (7, [50.0, 55.0, 22.0, 36.0])]),
    12: (200, 120, [(4, [5.0, 10.0, 50.0, 90.0]), (4, [60.0, 120.0, 55.0, 70.0]),
                    (1, [70.0, 20.0, 40.0, 40.0])]),
    13: (128, 128, [(7, [30.0, 40.0, 64.0, 48.0]), (1, [100.0, 100.0, 20.0, 24.0])]),
    14: (75, 300, [(7, [200.0, 5.0, 90.0, 60.0]), (1, [20.0, 30.0, 45.0, 40.0]),
                   (4, [100.0, 10.0, 30.0, 50.0])]),
}


def _yxyx(xywh) -> list:
  x, y, w, h = xywh
  return [y, x, y + h, x + w]


@pytest.fixture(scope="module")
def annotated_set(tmp_path_factory):
  """(TFRecord path, COCO annotation JSON path) of the four images above."""
  directory = tmp_path_factory.mktemp("round_trip")
  records, coco = str(directory / "val.tfrecord"), directory / "instances.json"
  rng = np.random.default_rng(0)
  images, annotations = [], []
  with tf.io.TFRecordWriter(records) as writer:
    for image_id, (height, width, objects) in ANNOTATIONS.items():
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      writer.write(build_example(
          encoded_image=encode_png(pixels), image_format="png", source_id=str(image_id),
          height=height, width=width, boxes_yxyx=np.array([_yxyx(b) for _, b in objects]),
          category_ids=[c for c, _ in objects],
          category_names=[CATEGORIES[c] for c, _ in objects]).SerializeToString())
      images.append({"id": image_id, "height": height, "width": width})
      for category_id, box in objects:
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": category_id, "bbox": box, "iscrowd": 0,
                            "area": box[2] * box[3]})
  coco.write_text(json.dumps({
      "images": images, "annotations": annotations,
      "categories": [{"id": i, "name": n} for i, n in CATEGORIES.items()]}))
  return records, str(coco)


class PerfectHeads:
  """Stands in for the detector: returns the per-level outputs held in its variables (set
  per batch by the test), with the detector's own flatten_outputs and anchors."""

  input_convention = IMAGENET_MEAN_STD
  flatten_outputs = EfficientDet.flatten_outputs

  def __init__(self, anchors: AnchorConfig, num_classes: int, batch: int):
    self.anchors, self.num_classes = anchors, num_classes
    per_location = anchors.anchors_per_location
    levels = range(anchors.min_level, anchors.max_level + 1)
    size = anchors.feature_size
    self.class_outputs = {str(l): tf.Variable(tf.zeros(
        [batch, size(l), size(l), per_location * num_classes])) for l in levels}
    self.box_outputs = {str(l): tf.Variable(tf.zeros(
        [batch, size(l), size(l), per_location * 4])) for l in levels}

  def __call__(self, images, training=False):
    del images, training
    return ({k: v.read_value() for k, v in self.class_outputs.items()},
            {k: v.read_value() for k, v in self.box_outputs.items()})

  def set_outputs(self, per_image: list) -> None:
    """per_image: one (class {level: [h, w, A*K]}, box {level: [h, w, A*4]}) per batch row."""
    for level, variable in self.class_outputs.items():
      variable.assign(np.stack([c[level] for c, _ in per_image]))
    for level, variable in self.box_outputs.items():
      variable.assign(np.stack([b[level] for _, b in per_image]))


def perfect_outputs(cls_targets: np.ndarray, box_targets: np.ndarray,
                    anchors: AnchorConfig) -> tuple[dict, dict]:
  """One image's targets ([N] class index or -1, [N, 4] deltas) as the heads lay them out:
  level by level, each [h, w, A*K] / [h, w, A*4] with the anchors of a location together."""
  logits = np.full([len(cls_targets), NUM_CLASSES], -LOGIT, np.float32)
  positive = np.flatnonzero(cls_targets >= 0)
  logits[positive, cls_targets[positive]] = LOGIT
  class_outputs, box_outputs, start = {}, {}, 0
  for level in range(anchors.min_level, anchors.max_level + 1):
    size = anchors.feature_size(level)
    count = size * size * anchors.anchors_per_location
    class_outputs[str(level)] = logits[start:start + count].reshape([size, size, -1])
    box_outputs[str(level)] = box_targets[start:start + count].reshape([size, size, -1])
    start += count
  assert start == len(cls_targets) == anchors.num_anchors
  return class_outputs, box_outputs


def test_perfect_outputs_give_ap_one(annotated_set, tmp_path):
  records, annotation_file = annotated_set
  anchors = AnchorConfig(image_size=IMAGE_SIZE)
  # Targets exactly as training assigns them (no flip, no scale jitter).
  parser = DetectionParser(InputConfig(is_training=True, flip=False), anchors, NUM_CLASSES)
  outputs = {}
  for serialized in tf.data.TFRecordDataset(records):
    parsed = parser(serialized, tf.constant([0, 0], tf.int64))
    image_id = int(decode_source_ids(parsed["source_ids"].numpy())[0])
    cls_targets = parsed["cls_targets"].numpy()
    assert (cls_targets >= 0).sum() >= len(ANNOTATIONS[image_id][2])  # every box matched
    outputs[image_id] = perfect_outputs(cls_targets, parsed["box_targets"].numpy(), anchors)
  assert sorted(outputs) == sorted(ANNOTATIONS)

  model = PerfectHeads(anchors, NUM_CLASSES, BATCH)
  task = DetectionTask(annotation_file=annotation_file,
                       eval_input=InputConfig(file_pattern=records))

  def batches():
    """The real eval pipeline's batches, each after its perfect outputs are set."""
    for batch in task.eval_dataset(model, BATCH):
      model.set_outputs([outputs[int(s)] for s in batch["source_ids"].numpy()])
      yield batch

  # Eager predict: the perfect outputs change per batch (Python state a trace would freeze).
  metrics, extra = evaluate(task, model, batches(),
                            predict=lambda features: task.predict(model, features))
  per_class = extra["per_class_AP"]
  assert set(per_class) == set(CATEGORIES.values())
  assert metrics["AP"] >= 0.99, (metrics, per_class)
  assert min(per_class.values()) >= 0.99, per_class
