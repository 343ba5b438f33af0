"""Focal and Huber losses against the reference check values."""
import numpy as np
import pytest
import tensorflow as tf

from detlab.detection.losses import DetectionLoss, focal_loss_elementwise, huber_elementwise


# alpha_t (1 - p_t)^gamma (-ln p_t) with alpha 0.25, gamma 1.5 (Lin et al. 2017). For
# (-4.59512, 0): p = sigmoid(-4.59512) = 0.01, so 0.75 * 0.01^1.5 * -ln(0.99) = 7.5377e-6.
@pytest.mark.parametrize("logit,label,value", [
    (0.0, 1.0, 0.06126613), (0.0, 0.0, 0.1837984), (2.0, 1.0, 0.001305954),
    (-4.59512, 0.0, 7.537749e-06), (-4.59512, 1.0, 1.134066)])
def test_focal_loss_check_values(logit, label, value):
  got = focal_loss_elementwise(tf.constant([logit]), tf.constant([label]), 0.25, 1.5)
  # Relative only: an absolute tolerance would swallow the 7.5e-6 value whole.
  np.testing.assert_allclose(got.numpy()[0], value, rtol=1e-4, atol=0)


def test_huber_check_values():
  got = huber_elementwise(tf.constant([0.05, -0.05, 0.3, -0.3]), 0.1).numpy()
  np.testing.assert_allclose(got, [0.00125, 0.00125, 0.025, 0.025], rtol=1e-6)


def test_detection_loss_normalizes_by_positives_plus_one_and_weights_box_loss():
  num_classes = 3
  logits = tf.zeros([1, 4, num_classes])
  cls_targets = tf.constant([[0, 2, -1, -1]])
  box_targets = tf.constant([[[0.3, 0, 0, 0], [0.05, 0, 0, 0], [0, 0, 0, 0], [9, 9, 9, 9]]])
  box_outputs = tf.zeros([1, 4, 4])
  out = DetectionLoss()(logits, box_outputs, cls_targets, box_targets)
  normalizer = 2 + 1
  focal_pos, focal_neg = 0.061266, 0.183798
  expected_cls = (2 * focal_pos + (4 * num_classes - 2) * focal_neg) / normalizer
  # Background anchors carry no box loss even with non-zero targets.
  expected_box = (0.025 + 0.00125) / (normalizer * 4)
  assert out["num_positives"].numpy() == 2
  np.testing.assert_allclose(out["class"].numpy(), expected_cls, rtol=1e-4)
  np.testing.assert_allclose(out["box"].numpy(), expected_box, rtol=1e-5)
  np.testing.assert_allclose(out["total"].numpy(), expected_cls + 50 * expected_box, rtol=1e-4)
