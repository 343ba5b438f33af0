"""Batch normalization with the papers' defaults, a sync-BN switch and a batch-1 fast path."""
import contextlib
import functools

import tensorflow as tf
import tf_keras as keras

# EfficientNet / EfficientDet use momentum 0.99 and epsilon 1e-3 (TF-slim convention).
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3

_multiply_add_allowed = True


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
  """Whether this process runs TF's oneDNN graph rewrites (TF_ENABLE_ONEDNN_OPTS, CPU default)."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-direct-tensorflow-import
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):
    return False


@contextlib.contextmanager
def stock_inference_form():
  """Traces inside keep the FusedBatchNorm op at every batch size (FLOP counting uses this:
  the profiler counts the multiply-add form's Mul/Add but not FusedBatchNorm, as the
  reference implementation's count does not)."""
  global _multiply_add_allowed
  previous, _multiply_add_allowed = _multiply_add_allowed, False
  try:
    yield
  finally:
    _multiply_add_allowed = previous


@keras.saving.register_keras_serializable(package="detlab")
class BatchNormalization(keras.layers.BatchNormalization):
  """tf_keras BatchNormalization with a batch-1 inference form that dodges a oneDNN slow path.

  Same variables, same checkpoints, the same training pass and the same values as the
  tf_keras layer. Only when oneDNN is on and a traced input has a static batch of 1 does
  inference take another form: `x * a + b` with `a = gamma / sqrt(var + eps)` and
  `b = beta - mean * a`, instead of a FusedBatchNormV3 op.

  Why: with oneDNN on, grappler fuses Conv2D + inference FusedBatchNorm into one oneDNN
  convolution with four binary post-ops, and at minibatch 1 oneDNN runs that with its
  `gemm:jit` convolution at well under 1 GFLOP/s (about 1 s for one 16->96 1x1 conv at
  256x256; ONEDNN_VERBOSE=1 shows it; batch 2 takes 45 ms). The multiply-add form is not
  matched by that fusion: a Conv2D -> BN -> swish -> depthwise -> BN -> swish block at
  256x256 runs in 16 ms at batch 1 instead of 1,015 ms. At batch 8 the fused form is the
  faster one for the whole D0 network (11.4 vs 8.5-9.4 img/s), so it is kept there; with
  oneDNN off the fused Eigen kernel is faster at batch 1 too (33 vs 62 ms for that block).
  """

  def call(self, inputs, training=None, mask=None):
    training_value = tf.get_static_value(self._get_training_value(training))
    if (not _multiply_add_allowed or not onednn_enabled() or inputs.shape[0] != 1
        or training_value is None or training_value or mask is not None or self.renorm
        or self.virtual_batch_size is not None or self.adjustment is not None
        or list(self.axis) != [inputs.shape.rank - 1]):
      return super().call(inputs, training=training, mask=mask)
    inputs = tf.cast(inputs, self.compute_dtype)
    multiplier = tf.math.rsqrt(self.moving_variance + self.epsilon)
    if self.scale:
      multiplier *= self.gamma
    offset = -self.moving_mean * multiplier
    if self.center:
      offset += self.beta
    # Folding the multiplier into the preceding conv's kernel (conv -> BiasAdd -> swish) was
    # tried: grappler then leaves the conv to Eigen, 29 ms for the block above instead of 16.
    return inputs * tf.cast(multiplier, inputs.dtype) + tf.cast(offset, inputs.dtype)

  def get_config(self):
    # tf_keras' config drops `synchronized`; a re-built model would silently lose sync BN.
    return dict(super().get_config(), synchronized=self.synchronized)


def batch_norm(name: str | None = None, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON, synchronized: bool = False,
               axis: int = -1, scale: bool = True) -> keras.layers.BatchNormalization:
  """A BatchNormalization layer; `synchronized=True` all-reduces statistics across replicas."""
  return BatchNormalization(axis=axis, momentum=momentum, epsilon=epsilon, scale=scale,
                            synchronized=synchronized, name=name)
