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
_onednn_only_forms = True


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


def onednn_only_forms_allowed() -> bool:
  """Whether a trace may use the forms chosen for oneDNN's kernels alone: oneDNN is on, and
  not inside `portable_forms()` (or `stock_inference_form()`)."""
  return _rewrites_allowed and _onednn_only_forms and onednn_enabled()


@contextlib.contextmanager
def portable_forms():
  """Traces inside use no op form chosen for oneDNN's kernels alone: no grouped Conv2D for a
  depthwise conv (a SavedModel may be served where oneDNN is off, where grappler's Eigen fused
  convolution refuses it: "Fused conv implementation does not support grouped convolutions")
  and SE's mean stays a Mean, not a full-window AvgPool. Exports (SavedModel, LiteRT, ONNX,
  OpenVINO) trace in it; the other inference forms are standard ops and stay."""
  global _onednn_only_forms
  previous, _onednn_only_forms = _onednn_only_forms, False
  try:
    yield
  finally:
    _onednn_only_forms = previous


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
    with a bias). With depth multiplier 1 the folded conv is written as the same convolution
    in Conv2D's grouped form (one group per channel, kernel [kh, kw, 1, C]): the remapper
    fuses Conv2D + BiasAdd + swish (or ReLU6) into one oneDNN convolution, where a depthwise
    conv's fusion stops at the bias and leaves the activation a pass of its own (D0 at batch
    8: the 16 MBConv depthwise convs with their swish 1.1-1.5x faster each). Outside
    `portable_forms()` only (grouped Conv2D is oneDNN's). The original depthwise op is left
    without consumers and pruned.
  * A 1x1 Conv2D whose input is a squeeze-excite gating, `x * gate` with gate [N, 1, 1, C]
    (MBConv's projection): BN is folded into the conv and the gate into its kernel, one
    batched matmul `x[n] @ (gate[n] * k * a) + b` per sample instead of the full-size
    multiply and the conv (D0 batch 8: 1.1-2.5x per block). The multiply and the conv are
    left without consumers and pruned.
  * BiasAdd of a Conv2D (the pointwise half of a SeparableConv2D with a bias, as in the BiFPN
    and the heads): the bias goes into the BN's mean (`mean - bias`) and the BN takes the
    conv's output before the BiasAdd, so grappler fuses Conv2D + FusedBatchNorm (+ swish).
  * A Conv2D (or Conv2D + BiasAdd) in reduced precision (mixed_bfloat16 / mixed_float16):
    folded into it, `conv(x, k * a) + b`. grappler fuses Conv2D + FusedBatchNorm in float32
    only; in bfloat16 the BN and the swish after it stayed two passes of their own.
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
    if _is_nhwc(producer, "DepthwiseConv2dNative"):
      return self._folded_into_conv(producer)
    gating = _squeeze_excite_gating(producer)
    if gating is not None:
      return self._folded_into_gated_projection(producer, *gating)
    # A reduced-precision Conv2D + FusedBatchNorm is left unfused by grappler's remapper (two
    # passes and a separate swish pass: D0 bfloat16 inference 76 of each); folded into the
    # kernel and a bias, Conv2D + BiasAdd + swish is one oneDNN convolution. (Not the batch-1
    # float32 form without AVX-512: oneDNN runs a 1x1 conv there with x64:gemm:jit, whose
    # bias and swish post-ops made D0 2x slower, oneDNN with ONEDNN_MAX_CPU_ISA=AVX2.)
    reduced_precision = inputs.dtype != tf.float32
    if _is_nhwc(producer, "Conv2D") and reduced_precision:
      return self._folded_into_conv(producer)
    if _is_nhwc(producer, "BiasAdd") and producer.inputs[0].op.type == "Conv2D":
      conv_output, bias = producer.inputs[0], tf.cast(producer.inputs[1], tf.float32)
      if reduced_precision and _is_nhwc(conv_output.op, "Conv2D"):
        return self._folded_into_conv(conv_output.op, shift=bias)
      if multiply_add:
        multiplier, offset = self._multiplier_offset(shift=bias)
        return (conv_output * tf.cast(multiplier, inputs.dtype)
                + tf.cast(offset, inputs.dtype))
      return self._fused_inference(conv_output, shift=bias)
    if multiply_add:
      multiplier, offset = self._multiplier_offset()
      return inputs * tf.cast(multiplier, inputs.dtype) + tf.cast(offset, inputs.dtype)
    return super().call(inputs, training=training, mask=mask)

  def _folded_into_conv(self, conv, shift=None):
    """conv(x, kernel * a) + b: `conv` (a Conv2D or DepthwiseConv2dNative op, NHWC) with this
    BN folded into it (`shift`: a bias the conv's output had before the BN)."""
    images, kernel = conv.inputs[0], conv.inputs[1]
    dtype = images.dtype
    multiplier, offset = self._multiplier_offset(shift)
    attributes = {name: conv.get_attr(name)
                  for name in ("strides", "padding", "explicit_paddings", "dilations")}
    if conv.type == "Conv2D":  # kernel [kh, kw, C_in, C_out]: output channel o scales by a[o]
      kernel = tf.cast(tf.cast(kernel, tf.float32) * multiplier, dtype)
      outputs = tf.raw_ops.Conv2D(input=images, filter=kernel, data_format="NHWC",
                                  **attributes)
      return tf.nn.bias_add(outputs, tf.cast(offset, dtype))
    # kernel [kh, kw, C, M] (depth multiplier M): output channel c * M + m scales by a[c*M+m].
    shape = kernel.shape if kernel.shape.is_fully_defined() else tf.shape(kernel)
    scale = tf.reshape(multiplier, [shape[2], shape[3]])
    kernel = tf.cast(tf.cast(kernel, tf.float32) * scale, dtype)
    if kernel.shape[3] == 1 and onednn_only_forms_allowed():
      # The same convolution as C groups of one channel: [kh, kw, C, 1] -> [kh, kw, 1, C].
      kernel = tf.transpose(kernel, [0, 1, 3, 2])
      outputs = tf.raw_ops.Conv2D(input=images, filter=kernel, data_format="NHWC",
                                  **attributes)
    else:
      outputs = tf.raw_ops.DepthwiseConv2dNative(input=images, filter=kernel,
                                                 data_format="NHWC", **attributes)
    return tf.nn.bias_add(outputs, tf.cast(offset, dtype))

  def _folded_into_gated_projection(self, conv, images, gate):
    """x[n] @ (gate[n] * k * a) + b per sample: the 1x1 `conv` of `images * gate` with this
    BN folded in (class docstring)."""
    _, height, width, channels = images.shape
    kernel = tf.cast(conv.inputs[1], tf.float32)[0, 0]  # [C, C_out]
    multiplier, offset = self._multiplier_offset()
    kernel = (tf.reshape(tf.cast(gate, tf.float32), [-1, channels, 1])
              * (kernel * multiplier)[tf.newaxis])  # [N, C, C_out]
    outputs = tf.matmul(tf.reshape(images, [-1, height * width, channels]),
                        tf.cast(kernel, images.dtype))
    outputs = outputs + tf.cast(offset, images.dtype)
    return tf.reshape(outputs, [-1, height, width, kernel.shape[-1]])

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


def _is_nhwc(op, op_type: str) -> bool:
  return op is not None and op.type == op_type and op.get_attr("data_format") == b"NHWC"


def _squeeze_excite_gating(conv):
  """(x, gate) where `conv` is a stride-1 1x1 NHWC Conv2D of `x * gate`, gate [N, 1, 1, C]
  and x [N, H, W, C] with H and W known (a squeeze-excite block's gated projection); else
  None."""
  if (not _is_nhwc(conv, "Conv2D") or list(conv.get_attr("strides")) != [1, 1, 1, 1]
      or list(conv.get_attr("dilations")) != [1, 1, 1, 1]
      or conv.inputs[1].shape[:2] != [1, 1] or conv.inputs[0].op.type != "Mul"):
    return None
  first, second = conv.inputs[0].op.inputs
  for images, gate in ((first, second), (second, first)):
    if (images.shape.rank == 4 and gate.shape.rank == 4
        and gate.shape[1:3] == [1, 1] and None not in images.shape[1:]
        and images.shape[1] * images.shape[2] > 1 and gate.shape[3] == images.shape[3]):
      return images, gate
  return None


def batch_norm(name: str | None = None, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON, synchronized: bool = False,
               axis: int = -1, scale: bool = True) -> keras.layers.BatchNormalization:
  """A BatchNormalization layer; `synchronized=True` all-reduces statistics across replicas."""
  return BatchNormalization(axis=axis, momentum=momentum, epsilon=epsilon, scale=scale,
                            synchronized=synchronized, name=name)
