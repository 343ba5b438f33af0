"""Under mixed precision the class and box predictors compute in float32.

bf16 logits (8 bits of mantissa) tie in the top-5000 pre-NMS selection and bf16 box deltas are
off by ~0.5 %, so the predictors take the bf16 tower features, cast them up and compute in
float32. (Export serves such models, hence the test lives here.)
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.heads.detection import box_head, class_head
from detlab.models.efficientdet import efficientdet
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=import-error


@pytest.fixture
def policy(request):
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(request.param)
  yield request.param
  keras.mixed_precision.set_global_policy(previous)


def tower_features(head, x, index):
  """The head's tower on one level, as its call computes it (in the policy's dtype)."""
  for conv, bns in zip(head.convs, head.bns):
    x = tf.nn.swish(bns[index](conv(x), training=False))
  return x


def float32_predictor(head, x):
  p = head.predictor
  y = tf.nn.separable_conv2d(tf.cast(x, tf.float32), p.depthwise_kernel, p.pointwise_kernel,
                             strides=[1, 1, 1, 1], padding="SAME")
  return y + p.bias


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"], indirect=True)
@pytest.mark.parametrize("make_head", [
    lambda: class_head(16, 2, num_classes=3, num_anchors=9, min_level=3, max_level=4),
    lambda: box_head(16, 2, num_anchors=9, min_level=3, max_level=4)], ids=["class", "box"])
def test_predictor_is_a_float32_computation_on_low_precision_tower_features(policy, make_head):
  keras.utils.set_random_seed(0)
  head = make_head()
  features = {str(l): tf.random.stateless_normal([2, 16 >> (l - 3), 16 >> (l - 3), 16],
                                                 seed=[l, 7]) for l in (3, 4)}
  outputs = head(features, training=False)
  low = tf.bfloat16 if policy == "mixed_bfloat16" else tf.float16
  for index, level in enumerate(("3", "4")):
    tower = tower_features(head, features[level], index)
    assert tower.dtype == low  # the tower itself stays in low precision
    assert outputs[level].dtype == tf.float32
    expected = float32_predictor(head, tower).numpy()
    magnitude = np.abs(expected).max()  # box deltas of a fresh head are ~1e-3
    np.testing.assert_allclose(outputs[level].numpy(), expected, rtol=0, atol=1e-6 * magnitude)
    # A low-precision predictor would be measurably off (so the check above can fail).
    p = head.predictor
    rounded = tf.nn.separable_conv2d(tower, tf.cast(p.depthwise_kernel, low),
                                     tf.cast(p.pointwise_kernel, low), [1, 1, 1, 1], "SAME")
    rounded = tf.cast(rounded + tf.cast(p.bias, low), tf.float32).numpy()
    assert np.abs(rounded - expected).max() > 1e-4 * magnitude


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_a_bf16_detector_returns_float32_logits_and_box_deltas(policy):
  model = efficientdet(tiny_test_backbone, num_classes=3, image_size=128, fpn_width=16,
                       fpn_cells=1, head_repeats=1)
  class_outputs, box_outputs = model(tf.zeros([1, 128, 128, 3]), training=False)
  assert model.fpn.compute_dtype == "bfloat16"
  assert {t.dtype for t in [*class_outputs.values(), *box_outputs.values()]} == {tf.float32}
