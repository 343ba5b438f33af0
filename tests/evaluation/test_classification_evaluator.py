"""ClassificationEvaluator against an independent computation (argsort top-k, TF's
sparse softmax cross-entropy), strict JSON, the label-range error, and the PNG grid."""
import json

import numpy as np
import pytest
import tensorflow as tf

from detlab.evaluation.classification import ClassificationEvaluator


def _reference(logits: np.ndarray, labels: np.ndarray, k: int = 5):
  order = np.argsort(-logits, axis=1)
  top1 = np.mean(order[:, 0] == labels)
  top5 = np.mean([label in row[:k] for row, label in zip(order, labels)])
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)).numpy()
  per_class = [np.mean(order[labels == c, 0] == c) if np.any(labels == c) else None
               for c in range(logits.shape[1])]
  return top1, top5, loss, per_class


def test_metrics_match_an_independent_computation_over_uneven_batches() -> None:
  rng = np.random.default_rng(0)
  num_classes = 12
  labels = rng.integers(0, num_classes - 1, 203)  # the last class never occurs
  logits = rng.normal(0, 1, (203, num_classes)) + 1.5 * np.eye(num_classes)[labels]
  evaluator = ClassificationEvaluator(num_classes)
  for start in range(0, 203, 64):  # 64, 64, 64, 11
    evaluator.update(logits[start:start + 64].astype(np.float32), labels[start:start + 64])
  result = evaluator.result()
  top1, top5, loss, per_class = _reference(logits.astype(np.float32), labels)
  assert 0.2 < top1 < top5 < 1.0  # the data exercises both metrics
  assert result["top1"] == pytest.approx(top1, abs=1e-12)
  assert result["top5"] == pytest.approx(top5, abs=1e-12)
  assert result["loss"] == pytest.approx(loss, rel=1e-5)
  assert result["per_class_accuracy"][-1] is None
  np.testing.assert_allclose(result["per_class_accuracy"][:-1], per_class[:-1], atol=1e-12)
  assert result["num_examples"] == 203
  parsed = json.loads(evaluator.to_json())  # strict JSON: None, not NaN
  assert parsed["per_class_accuracy"][-1] is None


def test_top5_is_top_k_for_fewer_than_five_classes() -> None:
  evaluator = ClassificationEvaluator(3)
  evaluator.update(np.array([[0.0, 1.0, 2.0]]), [0])
  assert evaluator.result()["top1"] == 0.0 and evaluator.result()["top5"] == 1.0


def test_label_outside_num_classes_names_both_numbers() -> None:
  evaluator = ClassificationEvaluator(4)
  with pytest.raises(ValueError, match="label 7 is outside 0..3"):
    evaluator.update(np.zeros((2, 4)), [1, 7])
  with pytest.raises(ValueError, match="empty"):
    evaluator.result()
