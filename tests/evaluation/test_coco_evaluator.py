"""CocoEvaluator against hand-made cases with known COCO results."""
import json

import numpy as np
import pytest
import tensorflow as tf

from detlab.evaluation.coco_evaluator import METRIC_NAMES, CocoEvaluator
from detlab.io import write_json


def _ground_truth(boxes, classes, image_ids=(1,), size=(100, 100)):
  n = len(boxes)
  padded = np.zeros((len(image_ids), 10, 4), np.float32)
  padded[0, :n] = np.reshape(boxes, (-1, 4))
  cls = -np.ones((len(image_ids), 10), np.int32)
  cls[0, :n] = classes
  areas = np.zeros((len(image_ids), 10), np.float32)
  areas[0, :n] = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
  return {"source_ids": np.array([str(i).encode() for i in image_ids]),
          "image_info": np.tile(np.array([[size, size, [1, 1], [0, 0]]], np.float32),
                                (len(image_ids), 1, 1)),
          "gt_boxes": padded, "gt_classes": cls, "gt_areas": areas,
          "gt_is_crowd": np.zeros((len(image_ids), 10), np.int32),
          "gt_count": np.array([n] + [0] * (len(image_ids) - 1))}


def _detections(boxes, scores, classes):
  d = np.zeros((1, 10, 4), np.float32)
  d[0, :len(boxes)] = np.reshape(boxes, (-1, 4))
  s = np.zeros((1, 10), np.float32)
  s[0, :len(scores)] = scores
  c = np.zeros((1, 10), np.int32)
  c[0, :len(classes)] = classes
  return {"boxes": d, "scores": s, "classes": c, "num_detections": np.array([len(boxes)])}


GT = [[10, 10, 50, 60], [40, 40, 90, 95]]


def test_perfect_detections_score_one_and_metrics_are_the_twelve_coco_numbers():
  evaluator = CocoEvaluator({1: "a", 2: "b"})
  evaluator.add_batch(_detections(GT, [0.9, 0.8], [0, 1]), _ground_truth(GT, [0, 1]))
  metrics, per_class = evaluator.evaluate()
  assert tuple(metrics) == METRIC_NAMES
  assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
  assert per_class == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_wrong_class_and_loose_box_lower_the_right_numbers():
  evaluator = CocoEvaluator({1: "a", 2: "b"})
  # Box 1 correct; box 2 shifted so its IoU is between 0.5 and 0.75.
  shifted = [40, 48, 90, 103]
  evaluator.add_batch(_detections([GT[0], shifted], [0.9, 0.8], [0, 1]),
                      _ground_truth(GT, [0, 1]))
  metrics, per_class = evaluator.evaluate()
  assert metrics["AP50"] == pytest.approx(1.0)
  assert metrics["AP75"] == pytest.approx(0.5)
  assert per_class["a"] == pytest.approx(1.0) and per_class["b"] < 0.8


def test_annotation_file_is_used_as_ground_truth(tmp_path):
  coco = {"images": [{"id": 1, "height": 100, "width": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 50, 40],
                           "area": 2000, "iscrowd": 0}],
          "categories": [{"id": 7, "name": "seven"}]}
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(coco))
  evaluator = CocoEvaluator({7: "seven"}, annotation_file=str(path))
  # Non-contiguous id 7 = class index 6.
  evaluator.add_batch(_detections([[10, 10, 50, 60]], [0.9], [6]), _ground_truth([], []))
  metrics, per_class = evaluator.evaluate()
  assert metrics["AP"] == pytest.approx(1.0) and per_class == {"seven": pytest.approx(1.0)}


def test_no_detections_gives_zeros():
  evaluator = CocoEvaluator({1: "a"})
  evaluator.add_batch(_detections([], [], []), _ground_truth(GT[:1], [0]))
  metrics, _ = evaluator.evaluate()
  assert all(v == 0.0 for v in metrics.values())


def _coco_file(path, num_images=4, iscrowd=0):
  """One 100x100 image per id 1..num_images, one box [10, 10, 50, 40] (xywh) of category 1."""
  coco = {"images": [{"id": i, "height": 100, "width": 100} for i in range(1, num_images + 1)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 50, 40],
                           "area": 2000, "iscrowd": iscrowd}
                          for i in range(1, num_images + 1)],
          "categories": [{"id": 1, "name": "a"}]}
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(coco))
  return path


def _perfect_batch(image_ids):
  """Each image: the one box of _coco_file as a detection, in yxyx pixels."""
  n = len(image_ids)
  boxes = np.zeros((n, 10, 4), np.float32)
  boxes[:, 0] = [10, 10, 50, 60]
  scores = np.zeros((n, 10), np.float32)
  scores[:, 0] = 0.9
  detections = {"boxes": boxes, "scores": scores, "classes": np.zeros((n, 10), np.int32),
                "num_detections": np.ones(n, np.int32)}
  return detections, {"source_ids": np.array([str(i).encode() for i in image_ids])}


def test_perfect_detections_on_a_subset_of_the_annotation_file_score_one(tmp_path):
  """Images 1-2 of 4 evaluated: the 2 never-evaluated images must not count as misses."""
  evaluator = CocoEvaluator({1: "a"}, annotation_file=_coco_file(str(tmp_path / "gt.json")))
  evaluator.add_batch(*_perfect_batch([1, 2]))
  metrics, per_class = evaluator.evaluate()
  assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
  assert per_class == {"a": pytest.approx(1.0)}


def test_eval_images_missing_from_the_annotation_file_are_named(tmp_path):
  evaluator = CocoEvaluator({1: "a"}, annotation_file=_coco_file(str(tmp_path / "gt.json")))
  evaluator.add_batch(*_perfect_batch([2, 17, 23]))
  with pytest.raises(ValueError, match=r"2 evaluated image\(s\) are not in .*gt.json: "
                                       r"image ids 17, 23\."):
    evaluator.evaluate()


def test_string_iscrowd_in_the_annotation_file_is_not_a_crowd(tmp_path):
  """iscrowd "0" is truthy: pycocotools alone would ignore the box and find AP -1."""
  path = _coco_file(str(tmp_path / "gt.json"), num_images=1, iscrowd="0")
  evaluator = CocoEvaluator({1: "a"}, annotation_file=path)
  evaluator.add_batch(*_perfect_batch([1]))
  assert evaluator.evaluate()[0]["AP"] == pytest.approx(1.0)


def test_eval_set_without_annotations_gives_a_message_and_strict_json(tmp_path):
  evaluator = CocoEvaluator({1: "a", 2: "b"})
  evaluator.add_batch(_detections([GT[0]], [0.9], [0]), _ground_truth([], []))
  metrics, per_class = evaluator.evaluate()
  assert "have no ground-truth boxes" in evaluator.summary_text
  assert set(metrics.values()) == {-1.0} and set(per_class.values()) == {-1.0}
  path = str(tmp_path / "metrics.json")
  write_json(path, {"metrics": metrics, "per_class_AP": dict(per_class, c=float("nan"))})

  def refuse(constant):
    raise AssertionError(f"{constant} in metrics.json is not strict JSON")

  saved = json.loads(open(path).read(), parse_constant=refuse)
  assert saved["metrics"]["AP"] == -1.0 and saved["per_class_AP"]["c"] is None


def test_annotation_file_and_metrics_go_through_gfile():
  """ram:// is TF's in-memory file system: builtin open cannot read or write there (the
  pictures' ram:// writes are test_visualize's)."""
  root = "ram://detlab_eval_test"
  tf.io.gfile.makedirs(root)
  evaluator = CocoEvaluator({1: "a"}, annotation_file=_coco_file(f"{root}/gt.json", 1))
  evaluator.add_batch(*_perfect_batch([1]))
  metrics, per_class = evaluator.evaluate()
  assert metrics["AP"] == pytest.approx(1.0)
  write_json(f"{root}/metrics.json", {"metrics": metrics, "per_class_AP": per_class, "step": 3})
  with tf.io.gfile.GFile(f"{root}/metrics.json") as f:
    assert json.load(f)["step"] == 3
