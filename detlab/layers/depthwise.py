"""DepthwiseConv2D whose training pass on a oneDNN CPU takes TensorFlow's own kernel for the
filter gradient of kernels larger than 3x3 (and, in bfloat16 without AMX, float32 gradients).

With TF's oneDNN rewrites on (detlab's CPU default), every depthwise op runs in oneDNN. oneDNN
has a dedicated depthwise kernel (`jit_dw`) for the forward pass, the input gradient and the
3x3 filter gradient, but computes a 5x5 filter gradient with its generic grouped convolution,
which pads every one-channel group to a 16x16 block (ONEDNN_VERBOSE: `jit:avx512_core
backward_weights ... g144mb8_ic144oc144`). TensorFlow's own CPU kernel for the same gradient
is 1.4-6x faster there: at EfficientNet-B0's 5x5 layers, batch 8 at 512² on a 2-core AVX-512
Xeon (one inter-op thread), block3a (5x5, stride 2, 128² x 144) 68 vs 11 ms, block3b (64² x
240) 46 vs 22 ms, block5 (32² x 672) 26 vs 19 ms, block6 (16² x 1152) 13 vs 8 ms; in all,
one B0 training step's nine 5x5 filter gradients 230 -> 114 ms. For 3x3 kernels and for the
input gradient oneDNN is the faster one (1.2-2.4x), so they stay as they are.

TF's graph rewrite hands an op to oneDNN only for SAME/VALID padding; the filter gradient
here is the same op with that padding written out (padding="EXPLICIT"), which keeps it on
TensorFlow's kernel.

In bfloat16 (mixed_bfloat16) on a CPU with AVX512_BF16 but no AMX, oneDNN's bfloat16
depthwise backward kernels are the slow ones: at batch 8, 512², a stride-2 input gradient
takes 414 ms (block2a, 3x3) and 259 ms (block3a, 5x5) where float32 takes 21 and 10, and
bfloat16 5x5 filter gradients take 106-340 ms (oneDNN or TF's kernel) where TF's float32 one
takes 11-22. There those gradients are computed in float32 (inputs cast up, results cast
down; no less accurate): D0 mixed_bfloat16 training step at batch 8 1.88 -> 2.39 img/s
(1.27x, 6 alternating rounds; float32 training stays faster on such a CPU).

Only in a training pass, on a CPU-only process with oneDNN on, with dilation 1, channels-last
data and static spatial sizes; the variables, names, forward op and inference graph are
keras' own.
"""
import functools

import tensorflow as tf
import tf_keras as keras

from detlab.layers import normalization
from detlab.layers.normalization import call_training


def _same_padding(size: int, out: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF's SAME padding (before, after) of one spatial axis."""
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def explicit_paddings(input_shape, output_shape, kernel_size, stride: int,
                      padding: str) -> list[int]:
  """The `explicit_paddings` attribute (NHWC, 8 ints) that equals `padding` (SAME/VALID)."""
  if padding == "VALID":
    return [0] * 8
  top, bottom = _same_padding(input_shape[1], output_shape[1], kernel_size[0], stride)
  left, right = _same_padding(input_shape[2], output_shape[2], kernel_size[1], stride)
  return [0, 0, top, bottom, left, right, 0, 0]


def depthwise_with_cpu_gradients(inputs, kernel, stride: int, padding: str):
  """tf.nn.depthwise_conv2d(inputs, kernel, [1, s, s, 1], padding) with the gradients the
  module docstring chooses: the filter gradient of kernels larger than 3x3 on TensorFlow's own
  kernel; in bfloat16 on a CPU without AMX, that filter gradient and stride-2 input gradients
  computed in float32. The forward op is the stock one. `inputs` needs static spatial sizes;
  `padding` is "SAME" or "VALID"."""
  strides = [1, stride, stride, 1]
  large = max(kernel.shape[0], kernel.shape[1]) > 3
  in_float32 = _bfloat16_in_float32(inputs.dtype)

  @tf.custom_gradient
  def depthwise(x, k):
    y = tf.nn.depthwise_conv2d(x, k, strides, padding)

    def gradient(upstream):
      upstream32 = tf.cast(upstream, tf.float32) if in_float32 else upstream  # cast once
      input_in_float32 = in_float32 and stride > 1
      d_inputs = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
          input_sizes=tf.shape(x), filter=tf.cast(k, tf.float32) if input_in_float32 else k,
          out_backprop=upstream32 if input_in_float32 else upstream, strides=strides,
          padding=padding)
      # EXPLICIT padding keeps a large kernel's filter gradient on TF's own kernel
      filter_in_float32 = in_float32 and large
      pads = (dict(padding="EXPLICIT", explicit_paddings=explicit_paddings(
          x.shape, y.shape, k.shape[:2], stride, padding)) if large else dict(padding=padding))
      d_kernel = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
          input=tf.cast(x, tf.float32) if filter_in_float32 else x, filter_sizes=tf.shape(k),
          out_backprop=upstream32 if filter_in_float32 else upstream, strides=strides, **pads)
      return tf.cast(d_inputs, x.dtype), tf.cast(d_kernel, k.dtype)

    return y, gradient

  return depthwise(inputs, kernel)


@functools.lru_cache(maxsize=None)
def _cpu_only() -> bool:
  """No GPU or TPU in this process (their depthwise kernels are their own)."""
  return not (tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def bfloat16_gradients_in_float32() -> bool:
  """Whether bfloat16 depthwise gradients are computed in float32 here: a CPU without AMX
  (no amx_bf16 flag; also where /proc/cpuinfo cannot be read), where oneDNN's bfloat16
  depthwise backward kernels are the slow ones (module docstring)."""
  return "amx_bf16" not in (normalization.cpu_flags() or frozenset())


def _bfloat16_in_float32(dtype) -> bool:
  return dtype == tf.bfloat16 and bfloat16_gradients_in_float32()


def takes_cpu_gradients(layer: keras.layers.DepthwiseConv2D, inputs) -> bool:
  """Whether a training pass of `layer` on `inputs` uses depthwise_with_cpu_gradients (module
  docstring): a kernel larger than 3x3, or a bfloat16 stride-2 conv where its gradients are
  computed in float32."""
  shape = inputs.shape
  chosen = max(layer.kernel_size) > 3 or (layer.strides[0] > 1
                                          and _bfloat16_in_float32(inputs.dtype))
  return (chosen and layer.strides[0] == layer.strides[1]
          and tuple(layer.dilation_rate) == (1, 1) and layer.data_format == "channels_last"
          and layer.padding in ("same", "valid") and shape.rank == 4
          and shape[1] is not None and shape[2] is not None
          and normalization.rewrites_allowed() and normalization.onednn_enabled()
          and _cpu_only())


@keras.saving.register_keras_serializable(package="detlab")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
  """keras.layers.DepthwiseConv2D; a training pass on a oneDNN CPU computes the filter gradient
  of kernels larger than 3x3 with TensorFlow's own kernel, and bfloat16 ones without AMX the
  slow gradients in float32 (module docstring).

  `call` takes no `training` argument (it reads keras' call context), so code that replaces a
  conv's `call` with a one-argument function (fake quantisation) works on it as on keras'."""

  def call(self, inputs):
    if not (call_training() and takes_cpu_gradients(self, inputs)):
      return super().call(inputs)
    outputs = depthwise_with_cpu_gradients(
        inputs, tf.convert_to_tensor(self.depthwise_kernel), self.strides[0],
        self.padding.upper())
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    return self.activation(outputs) if self.activation is not None else outputs
