"""SegmentationEvaluator against an independent per-class NumPy count; original-size resizing;
strict JSON; the overlay PNG."""
import json

import numpy as np
import pytest
import tensorflow as tf

from detlab.evaluation.segmentation import SegmentationEvaluator, original_size_predictions


def numpy_metrics(pairs, k):
  """Per-class IoU from set counts per image, no confusion matrix."""
  inter, union, correct, total = np.zeros(k), np.zeros(k), 0, 0
  for gt, pred in pairs:
    valid = gt != 255
    for c in range(k):
      g, p = (gt == c) & valid, (pred == c) & valid
      inter[c] += np.logical_and(g, p).sum()
      union[c] += np.logical_or(g, p).sum()
    correct += (gt[valid] == pred[valid]).sum()
    total += valid.sum()
  iou = [None if u == 0 else i / u for i, u in zip(inter, union)]
  return iou, np.mean([v for v in iou if v is not None]), correct / total


def test_random_label_maps_with_ignore_pixels_match_numpy():
  rng = np.random.default_rng(1)
  k = 6
  evaluator = SegmentationEvaluator(k)
  pairs = []
  for shape in [(7, 9), (12, 5), (3, 3)]:
    gt = rng.integers(0, k - 1, size=shape)  # class 5 never in the ground truth ...
    gt[rng.random(shape) < 0.2] = 255
    pred = rng.integers(0, k - 2, size=shape)  # ... nor predicted: absent
    pairs.append((gt, pred))
    evaluator.update_maps(gt, pred)
  iou, miou, accuracy = numpy_metrics(pairs, k)
  result = evaluator.result()
  assert result["per_class_iou"][5] is None and result["per_class_iou"][4] == 0.0
  np.testing.assert_allclose([v for v in result["per_class_iou"] if v is not None],
                             [v for v in iou if v is not None], rtol=1e-12)
  assert result["mIoU"] == pytest.approx(miou, rel=1e-12)
  assert result["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)
  parsed = json.loads(evaluator.to_json())
  assert parsed["per_class_iou"][5] is None and "NaN" not in evaluator.to_json()


def test_logits_are_resized_back_to_the_original_size_not_the_ground_truth_shrunk():
  # A 6x10 original resized to 3x5 (scale 0.5) and padded to 8x8; the prediction is class 1
  # on the left half of the resized region, class 2 elsewhere and 0 in the padding.
  logits = np.zeros([1, 8, 8, 3], np.float32)
  logits[0, :, :, 0] = 5.0
  logits[0, :3, :5, 0] = 0.0
  logits[0, :3, :5, 2] = 5.0
  logits[0, :3, :2, 2] = 0.0
  logits[0, :3, :2, 1] = 5.0
  info = np.array([[[6, 10], [3, 5], [0.5, 0.5], [0, 0]]], np.float32)
  (pred,) = original_size_predictions(logits, info)
  assert pred.shape == (6, 10)
  expected = tf.argmax(tf.image.resize(logits[:, :3, :5], [6, 10]), -1)[0].numpy()
  np.testing.assert_array_equal(pred, expected)
  assert set(np.unique(pred)) == {1, 2}  # the padding (class 0) never leaks in
  labels = np.full([1, 7, 11], 255)  # padded beyond the original size with ignore
  labels[0, :6, :10] = expected
  evaluator = SegmentationEvaluator(3)
  evaluator.update(logits, labels, info)
  assert evaluator.result()["pixel_accuracy"] == 1.0
  assert evaluator.result()["num_valid_pixels"] == 60


def test_bad_labels_and_empty_results_name_the_fix():
  evaluator = SegmentationEvaluator(3)
  with pytest.raises(ValueError, match="empty"):
    evaluator.result()
  with pytest.raises(ValueError, match="NUM_CLASSES"):
    evaluator.update_maps(np.array([[3]]), np.array([[0]]))
