"""Focal and Huber losses against the reference check values."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from official.vision.losses import focal_loss as tfm_focal_loss

from detlab.detection.losses import (DetectionLoss, class_focal_loss_sum, focal_loss_sum,
                                    huber_elementwise)


# alpha_t (1 - p_t)^gamma (-ln p_t) with alpha 0.25, gamma 1.5 (Lin et al. 2017). For
# (-4.59512, 0): p = sigmoid(-4.59512) = 0.01, so 0.75 * 0.01^1.5 * -ln(0.99) = 7.5377e-6.
@pytest.mark.parametrize("logit,label,value", [
    (0.0, 1.0, 0.06126613), (0.0, 0.0, 0.1837984), (2.0, 1.0, 0.001305954),
    (-4.59512, 0.0, 7.537749e-06), (-4.59512, 1.0, 1.134066)])
def test_focal_loss_check_values(logit, label, value):
  got = focal_loss_sum(tf.constant([logit]), tf.constant([label]), 0.25, 1.5)
  # Relative only: an absolute tolerance would swallow the 7.5e-6 value whole.
  np.testing.assert_allclose(got.numpy(), value, rtol=1e-4, atol=0)


def _focal_loss_and_gradient(fn, logits, labels):
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = fn(logits, labels)
  return loss.numpy(), tape.gradient(loss, logits).numpy()


@pytest.mark.parametrize("gamma", [1.5, 2.0, 0.0])
def test_focal_loss_and_its_closed_form_gradient_equal_tfm_and_float64_autodiff(gamma):
  """The closed-form gradient against autodiff through official.vision's FocalLoss (float32)
  and through the same formula in float64, on logits from -20 to 20 (confident anchors, where
  1 - p_t cancels) with 0/1 labels; inside a tf.function as in training. At gamma 0 (plain
  alpha-weighted cross-entropy) tfm's gradient is NaN where p_t rounds to 1 (pow's gradient
  0 * 0^-1); the closed form's is not."""
  rng = np.random.RandomState(0)
  logits = np.concatenate([np.linspace(-20, 20, 401), rng.normal(0, 4, 3599)])
  labels = (rng.uniform(size=logits.size) < 0.3).astype(np.float32)
  logits, labels = logits.reshape(2, 200, 10), labels.reshape(2, 200, 10)
  tfm_loss = tfm_focal_loss.FocalLoss(alpha=0.25, gamma=gamma,
                                      reduction=keras.losses.Reduction.NONE)
  ours = tf.function(lambda x, y: focal_loss_sum(x, y, 0.25, gamma))
  theirs = tf.function(lambda x, y: tf.reduce_sum(tfm_loss.call(y, x)))
  x32, y32 = tf.constant(logits, tf.float32), tf.constant(labels)
  loss, grad = _focal_loss_and_gradient(ours, x32, y32)
  tfm_value, tfm_grad = _focal_loss_and_gradient(theirs, x32, y32)

  def float64_loss(x, y):
    p_t = tf.where(y > 0, tf.sigmoid(x), 1 - tf.sigmoid(x))
    alpha_t = tf.where(y > 0, tf.constant(0.25, tf.float64), tf.constant(0.75, tf.float64))
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)
    modulator = (1 - p_t) ** gamma if gamma else 1.0
    return tf.reduce_sum(alpha_t * modulator * cross_entropy)

  exact_value, exact_grad = _focal_loss_and_gradient(
      float64_loss, tf.constant(logits, tf.float64), tf.constant(labels, tf.float64))
  np.testing.assert_allclose(loss, tfm_value, rtol=2e-6)
  np.testing.assert_allclose(loss, exact_value, rtol=2e-6)
  if gamma:
    np.testing.assert_allclose(grad, tfm_grad, rtol=0, atol=2e-6)
  else:
    assert np.isnan(tfm_grad).any() and np.isfinite(grad).all()
  # Nearer float64 than tfm's autodiff (its max error is 8e-7 at gamma 1.5 here).
  np.testing.assert_allclose(grad, exact_grad, rtol=2e-6, atol=4e-7)


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


def test_class_focal_loss_sum_equals_focal_loss_sum_of_the_one_hot_labels():
  """class_focal_loss_sum compares class ids with the column inside its compiled loop; an id
  of -1 (background) or one past the last class makes a row all negatives, as tf.one_hot."""
  rng = np.random.RandomState(1)
  logits = tf.constant(rng.normal(0, 5, (3, 50, 7)), tf.float32)
  classes = tf.constant(rng.randint(-1, 8, (3, 50)), tf.int32)
  one_hot = tf.one_hot(classes, 7, dtype=tf.float32)
  ours = tf.function(lambda x, c: class_focal_loss_sum(x, c, 0.25, 1.5))
  loss, grad = _focal_loss_and_gradient(ours, logits, classes)
  want, want_grad = _focal_loss_and_gradient(
      lambda x, y: focal_loss_sum(x, y, 0.25, 1.5), logits, one_hot)
  assert 0 < int(tf.reduce_sum(one_hot)) < 150 and -1 in classes.numpy() and 7 in classes.numpy()
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-9)
