"""Evaluation keeps every ground-truth box (no annotation file): eval batches are padded to
their own largest box count, not cut at InputConfig.max_instances, so an image with more
objects than max_instances is evaluated against all of them and AP/AR are not inflated."""
import numpy as np
import pytest
import tensorflow as tf

from detlab.data.detection_input import InputConfig, make_dataset
from detlab.data.tf_example import build_example, encode_png
from detlab.detection.anchors import AnchorConfig
from detlab.evaluation.detection import DetectionEvaluator

CROWDED, SPARSE = 150, 2  # objects in image 1 (> max_instances 100) and image 2


def _grid_boxes(count: int) -> np.ndarray:
  """`count` disjoint 8x8 boxes on a 10-pixel grid, 15 per row ([y1, x1, y2, x2] pixels)."""
  index = np.arange(count)
  y, x = 10.0 * (index // 15) + 1, 10.0 * (index % 15) + 1
  return np.stack([y, x, y + 8, x + 8], -1).astype(np.float32)


@pytest.fixture(scope="module")
def eval_pattern(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("crowded") / "val-00000-of-00001.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image_id, count in ((1, CROWDED), (2, SPARSE)):
      image = np.zeros([160, 160, 3], np.uint8)
      writer.write(build_example(
          encoded_image=encode_png(image), image_format="png", source_id=str(image_id),
          height=160, width=160, boxes_yxyx=_grid_boxes(count), category_ids=[1] * count,
          category_names=["square"] * count).SerializeToString())
  return str(path)


def test_an_image_with_150_objects_keeps_all_150_in_coco_evaluation(eval_pattern):
  config = InputConfig(eval_pattern, is_training=False)  # max_instances: the default 100
  assert config.max_instances < CROWDED
  batches = list(make_dataset(config, AnchorConfig(image_size=64, min_level=3, max_level=5),
                              num_classes=1, batch_size=2))
  assert len(batches) == 1
  batch = {k: v.numpy() for k, v in batches[0].items()}
  np.testing.assert_array_equal(batch["gt_count"], [CROWDED, SPARSE])
  assert batch["gt_boxes"].shape == (2, CROWDED, 4)  # padded to this batch's largest count
  np.testing.assert_allclose(batch["gt_boxes"][0], _grid_boxes(CROWDED), atol=1e-3)
  assert (batch["gt_classes"][1, SPARSE:] == -1).all()

  # Detections as a model emits them: at most 100 per image, here exactly the first 100
  # ground-truth boxes of image 1 and both of image 2. 150 boxes were there to find, so
  # recall is (100 + 2) / (150 + 2); with the ground truth cut at 100 it would read 1.0.
  boxes = np.zeros([2, 100, 4], np.float32)
  boxes[0], boxes[1, :SPARSE] = _grid_boxes(100), _grid_boxes(SPARSE)
  scores = np.linspace(0.99, 0.5, 100, dtype=np.float32)[None].repeat(2, 0)
  outputs = {"boxes": boxes, "scores": scores, "classes": np.zeros([2, 100], np.int32),
             "num_detections": np.array([100, SPARSE])}
  evaluator = DetectionEvaluator({1: "square"}, num_visualize=0)
  evaluator.update(batch, outputs)
  annotations = evaluator.coco._gt_annotations  # pylint: disable=protected-access
  assert sum(a["image_id"] == 1 for a in annotations) == CROWDED
  assert sum(a["image_id"] == 2 for a in annotations) == SPARSE
  metrics, _ = evaluator.result()
  np.testing.assert_allclose(metrics["AR100"], (100 + SPARSE) / (CROWDED + SPARSE), atol=1e-3)
  assert metrics["AP"] < 0.7  # every detection is right, a third of the objects unfound
