"""Batch normalization with the papers' defaults, a sync-BN switch and CPU inference forms
that TF's oneDNN rewrites fuse into the convolution before it."""
import contextlib
import functools

import tensorflow as tf
import tf_keras as keras
from tf_keras.src.engine import base_layer_utils

# EfficientNet / EfficientDet use momentum 0.99 and epsilon 1e-3 (TF-slim convention).
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3

_rewrites_allowed = True


@functools.lru_cache(maxsize=None)
def onednn_enabled() -> bool:
  """Whether this process runs TF's oneDNN graph rewrites (TF_ENABLE_ONEDNN_OPTS, CPU default)."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-direct-tensorflow-import
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):
    return False


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset | None:
  """The CPU's feature flags from /proc/cpuinfo; None where it cannot be read (not Linux)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return None


def cpu_has_avx512() -> bool:
  """Whether the CPU has AVX-512 (avx512f and avx512bw), where oneDNN has its avx512_core
  convolutions; False when /proc/cpuinfo cannot be read (not Linux)."""
  return {"avx512f", "avx512bw"} <= (cpu_flags() or frozenset())


def call_training() -> bool:
  """The training flag keras propagates to the layer being called (for layers whose `call`
  takes none): False unless it is a Python True."""
  training = base_layer_utils.call_context().training
  return bool(training) if training is not None and not tf.is_tensor(training) else False


def rewrites_allowed() -> bool:
  """False inside `stock_inference_form()`."""
  return _rewrites_allowed


@contextlib.contextmanager
def stock_inference_form():
  """Traces inside keep the plain FusedBatchNorm op after every producer at every batch size
  and tf.nn.silu for swish (FLOP counting uses this: the profiler counts the multiply-add
  form's Mul/Add and a folded BiasAdd but not FusedBatchNorm, and silu's beta * x Mul, as the
  reference implementation's count does: D0 2.548 G; the fusable forms count 2.530 G)."""
  global _rewrites_allowed
  previous, _rewrites_allowed = _rewrites_allowed, False
  try:
    yield
  finally:
    _rewrites_allowed = previous


def _graph_producer(inputs):
  """The op that produced `inputs` in a traced graph, or None (eager tensors have none)."""
  if tf.executing_eagerly():
    return None
  try:
    return inputs.op
  except AttributeError:
    return None


@keras.saving.register_keras_serializable(package="detlab")
class BatchNormalization(keras.layers.BatchNormalization):
  """tf_keras BatchNormalization whose inference form lets TF's CPU rewrites fuse it.

  Same variables, same checkpoints, the same training pass and the same values (to float
  rounding) as the tf_keras layer. Only inference (a static `training=False`, or a frozen
  layer) inside a traced function takes other forms, chosen by the op that produced the input:

  * DepthwiseConv2dNative (MBConv's depthwise conv): BN is folded into it, `depthwise(x, k *
    a) + b` with `a = gamma / sqrt(var + eps)` and `b = beta - mean * a`. grappler's remapper
    fuses Conv2D + FusedBatchNorm but not a depthwise conv + FusedBatchNorm, which then costs
    a separate pass over the tensor; depthwise + BiasAdd is fused (oneDNN's depthwise conv
    with a bias). The original depthwise op is left without consumers and pruned.
  * BiasAdd of a Conv2D (the pointwise half of a SeparableConv2D with a bias, as in the BiFPN
    and the heads): the bias goes into the BN's mean (`mean - bias`) and the BN takes the
    conv's output before the BiasAdd, so grappler fuses Conv2D + FusedBatchNorm (+ swish).
  * Anything else: tf_keras' FusedBatchNorm (which grappler fuses into a Conv2D before it).

  With oneDNN on, a static batch of 1 and a CPU without AVX-512, BN takes the form `x * a + b`
  instead of a FusedBatchNormV3 op: there grappler's fused Conv2D + inference FusedBatchNorm
  runs as one oneDNN convolution with four binary post-ops that oneDNN executes with its
  `gemm:jit` convolution at minibatch 1, at well under 1 GFLOP/s (about 1 s for one 16->96
  1x1 conv at 256x256; ONEDNN_VERBOSE=1 shows it; batch 2 takes 45 ms). On AVX-512 CPUs
  oneDNN runs the fused convolution with its avx512_core kernels at batch 1 too, and the fused
  form is the faster one (D0 batch 1, Xeon with AVX-512: 1.13x over the multiply-add form).
  """

  def _inference_rewrite_applies(self, inputs, training, mask) -> bool:
    # (a frozen layer, trainable=False, answers False here: it uses its moving statistics)
    training_value = tf.get_static_value(self._get_training_value(training))
    # A frozen layer inside a training pass (fine-tuning with frozen BN, quantization-aware
    # training) keeps tf_keras' form: the BiasAdd rewrite moves the conv bias into the
    # inference FusedBatchNorm's mean, through which no gradient flows.
    in_training_pass = training is not None and bool(tf.get_static_value(training))
    return (_rewrites_allowed and onednn_enabled() and training_value is not None
            and not in_training_pass
            and not training_value and mask is None and not self.renorm
            and self.virtual_batch_size is None and self.adjustment is None
            and list(self.axis) == [inputs.shape.rank - 1])

  def _multiplier_offset(self, shift=None):
    """float32 (a, b) with BN(x) = x * a + b; `shift` is added to x first (a folded bias)."""
    multiplier = tf.math.rsqrt(self.moving_variance + self.epsilon)
    if self.scale:
      multiplier *= self.gamma
    mean = self.moving_mean if shift is None else self.moving_mean - shift
    offset = -mean * multiplier
    if self.center:
      offset += self.beta
    return multiplier, offset

  def call(self, inputs, training=None, mask=None):
    if not self._inference_rewrite_applies(inputs, training, mask):
      return super().call(inputs, training=training, mask=mask)
    inputs = tf.cast(inputs, self.compute_dtype)
    producer = _graph_producer(inputs)
    multiply_add = inputs.shape[0] == 1 and not cpu_has_avx512()
    if (producer is not None and producer.type == "DepthwiseConv2dNative"
        and producer.get_attr("data_format") == b"NHWC"):
      return self._folded_into_depthwise(producer, inputs.dtype)
    if (producer is not None and producer.type == "BiasAdd"
        and producer.get_attr("data_format") == b"NHWC"
        and producer.inputs[0].op.type == "Conv2D"):
      conv_output, bias = producer.inputs[0], tf.cast(producer.inputs[1], tf.float32)
      if multiply_add:
        multiplier, offset = self._multiplier_offset(shift=bias)
        return (conv_output * tf.cast(multiplier, inputs.dtype)
                + tf.cast(offset, inputs.dtype))
      return self._fused_inference(conv_output, shift=bias)
    if multiply_add:
      multiplier, offset = self._multiplier_offset()
      return inputs * tf.cast(multiplier, inputs.dtype) + tf.cast(offset, inputs.dtype)
    return super().call(inputs, training=training, mask=mask)

  def _folded_into_depthwise(self, depthwise, dtype):
    """depthwise(x, kernel * a) + b: the same op with this BN folded into it."""
    images, kernel = depthwise.inputs[0], depthwise.inputs[1]
    multiplier, offset = self._multiplier_offset()
    # kernel [kh, kw, C, M] (depth multiplier M): output channel c * M + m scales by a[c*M+m].
    shape = tf.shape(kernel)
    scale = tf.reshape(multiplier, [shape[2], shape[3]])
    kernel = tf.cast(tf.cast(kernel, tf.float32) * scale, dtype)
    outputs = tf.raw_ops.DepthwiseConv2dNative(
        input=images, filter=kernel, strides=depthwise.get_attr("strides"),
        padding=depthwise.get_attr("padding"),
        explicit_paddings=depthwise.get_attr("explicit_paddings"), data_format="NHWC",
        dilations=depthwise.get_attr("dilations"))
    return tf.nn.bias_add(outputs, tf.cast(offset, dtype))

  def _fused_inference(self, inputs, shift):
    """tf_keras' inference FusedBatchNorm of `inputs + shift` (shift folded into the mean)."""
    gamma = self.gamma if self.scale else tf.ones(self._param_shape, self._param_dtype)
    beta = self.beta if self.center else tf.zeros(self._param_shape, self._param_dtype)
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, mean=self.moving_mean - shift, variance=self.moving_variance,
        epsilon=self.epsilon, is_training=False, data_format="NHWC")
    return outputs

  def get_config(self):
    # tf_keras' config drops `synchronized`; a re-built model would silently lose sync BN.
    return dict(super().get_config(), synchronized=self.synchronized)


def batch_norm(name: str | None = None, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON, synchronized: bool = False,
               axis: int = -1, scale: bool = True) -> keras.layers.BatchNormalization:
  """A BatchNormalization layer; `synchronized=True` all-reduces statistics across replicas."""
  return BatchNormalization(axis=axis, momentum=momentum, epsilon=epsilon, scale=scale,
                            synchronized=synchronized, name=name)
