"""Fake quantisation of a detector's convolutions for quantization-aware training (QAT).

Scheme (the INT8 conventions of LiteRT and OpenVINO, as tensorflow-model-optimization's
default 8-bit scheme has them):
- weights: symmetric per output channel, 8 bits, narrow range [-127, 127], the range taken
  from the kernel itself at every call (tfmot's LastValueQuantizer, per axis);
- the input of every convolution: per tensor, asymmetric 8 bits, its range an exponential
  moving average of the training batches' min / max that always holds 0 (tfmot's
  MovingAverageQuantizer); a SeparableConv2D is two convolutions once converted, so its
  depthwise output gets a range too.
Gradients pass straight through inside the ranges (TF's FakeQuantWithMinMaxVars ops).

Why not tfmot's `quantize_model`: it annotates and clones Sequential or functional models of
stock layers; detlab's EfficientDet is a subclassed model (functional backbone, subclassed
BiFPN nodes, heads whose one conv serves five levels with a BN each), which tfmot's
`quantize_apply` cannot clone. The convs here keep their own variables and classes: the ranges
live in one `FakeQuantRanges` layer beside them, so checkpoints of the float model still load
(fine-tuning a trained detector) and conv-BN folding (export/fold.py) keeps working.

BN during QAT: frozen (inference statistics, gamma/beta not trained), so folding BN into the
conv after training leaves the quantised grid where training put it: folding multiplies each
output channel of W by one number s, and the symmetric per-channel grid of s * W is the grid of
W scaled by |s| (its sign flips a symmetric grid onto itself). That keeps training, evaluation and every
exported INT8 format on the same arithmetic.

The graph keeps TF's FakeQuantWithMinMaxVars(PerChannel) ops, which OpenVINO converts to its
FakeQuantize (INT8 convolutions at run time, no calibration).
"""
import tensorflow as tf
import tf_keras as keras

from detlab.layers.normalization import call_training

NUM_BITS = 8
RANGE_DECAY = 0.99   # EMA of batch min/max (tfmot: 0.999 over full trainings; QAT fine-tunes
                     # here run a few hundred steps, so the ranges must settle within ~100)
MIN_RANGE = 1e-3     # a conv whose input is constant (a dead ReLU6) still gets a valid range


def quantizable(layer) -> bool:
  """The convolutions that become INT8 ops (transposed convs are not detection-model ops)."""
  return (isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                             keras.layers.SeparableConv2D))
          and not isinstance(layer, keras.layers.Conv2DTranspose))


def _own_name(layer) -> str:
  """The name a conv's ranges are stored under within its parent: folding keeps it
  (export/fold.py sets `quantization_source` on the per-level copies of a head's shared conv)."""
  return getattr(layer, "quantization_source", None) or layer.name


def named_convs(model: keras.Model) -> list:
  """[(key, conv)] for every quantizable conv of `model` once, in a fixed order; key = the
  layer names from the model down ("bifpn/cell0_node3/after_combine_conv"), unique where
  bare conv names are not (every BiFPN node has its own 'after_combine_conv')."""
  found, seen = [], set()

  def walk(layer, prefix):
    for child in layer._flatten_layers(include_self=False, recursive=False):  # pylint: disable=protected-access
      if id(child) in seen:
        continue
      seen.add(id(child))
      if quantizable(child):
        found.append((f"{prefix}{_own_name(child)}", child))
      else:
        walk(child, f"{prefix}{child.name}/")

  walk(model, "")
  return found


class FakeQuantRanges(keras.layers.Layer):
  """The activation ranges of every quantised conv input, by conv name: non-trainable
  variables `<name>_input_min/max` (and `<name>_depthwise_min/max` for a SeparableConv2D).
  Min = max = 0 means "not yet seen a batch": the first training batch sets them."""

  def __init__(self, names: dict, decay: float = RANGE_DECAY, **kwargs):
    super().__init__(**kwargs)
    self.decay = decay
    self.ranges = {}
    for name, separable in sorted(names.items()):
      points = ("input", "depthwise") if separable else ("input",)
      for point in points:
        key = f"{name}_{point}"
        self.ranges[key] = tuple(
            self.add_weight(f"{key}_{end}".replace("/", "."), shape=(), initializer="zeros",
                            trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.MEAN)
            for end in ("min", "max"))
    self.built = True

  def call(self, inputs):  # holds variables only
    return inputs

  def quantize(self, x, key: str, training: bool):
    """x fake-quantised per tensor with the range of `key` (updated first when training)."""
    low, high = self.ranges[key]
    x32 = tf.cast(x, tf.float32)
    if training:
      batch_low = tf.minimum(tf.reduce_min(x32), 0.0)
      batch_high = tf.maximum(tf.reduce_max(x32), 0.0)
      seen = high.value() > low.value()
      low.assign(tf.where(seen, self.decay * low + (1 - self.decay) * batch_low, batch_low))
      high.assign(tf.where(seen, self.decay * high + (1 - self.decay) * batch_high,
                           batch_high))
    low_value = tf.minimum(tf.identity(low), 0.0)
    high_value = tf.maximum(tf.identity(high), low_value + MIN_RANGE)
    out = tf.quantization.fake_quant_with_min_max_vars(x32, low_value, high_value,
                                                       num_bits=NUM_BITS)
    return tf.cast(out, x.dtype)


def quantize_kernel(kernel, depthwise: bool = False):
  """Symmetric per-output-channel fake quantisation of a conv kernel (narrow range).
  A depthwise kernel [kh, kw, C, M] has C * M output channels: it is viewed as
  [kh, kw, 1, C * M] (the same memory order) for the per-channel op."""
  shape = tf.shape(kernel)
  k32 = tf.cast(kernel, tf.float32)
  if depthwise:
    k32 = tf.reshape(k32, [shape[0], shape[1], 1, -1])
  bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(k32), axis=[0, 1, 2]), 1e-8))
  out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
      k32, -bound, bound, num_bits=NUM_BITS, narrow_range=True)
  if depthwise:
    out = tf.reshape(out, shape)
  return tf.cast(out, kernel.dtype)


def _quantized_call(layer, key: str, ranges: FakeQuantRanges):
  """A replacement for layer.call: the same op with fake-quantised input and weights."""

  def depthwise(x):  # the depthwise op of a DepthwiseConv2D or a SeparableConv2D
    return keras.backend.depthwise_conv2d(
        x, quantize_kernel(layer.depthwise_kernel, depthwise=True), strides=layer.strides,
        padding=layer.padding, dilation_rate=layer.dilation_rate, data_format=layer.data_format)

  def call(inputs):
    training = call_training()
    x = ranges.quantize(inputs, f"{key}_input", training)
    if isinstance(layer, keras.layers.SeparableConv2D):
      x = ranges.quantize(depthwise(x), f"{key}_depthwise", training)
      outputs = tf.nn.conv2d(x, quantize_kernel(layer.pointwise_kernel), strides=1,
                             padding="VALID")
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
      outputs = depthwise(x)
    else:
      if layer.groups != 1 or layer.padding == "causal":
        raise ValueError(f"Fake quantisation supports plain convs; {layer.name} has groups="
                         f"{layer.groups}, padding={layer.padding!r}.")
      outputs = layer.convolution_op(x, quantize_kernel(layer.kernel))
    if layer.use_bias:
      outputs = tf.nn.bias_add(outputs, layer.bias)
    return layer.activation(outputs) if layer.activation is not None else outputs

  return call


def conv_names(convs: list) -> dict:
  """{key: is separable} of named_convs' list; a key two different convs share is an error
  (their ranges would mix), except the per-level copies of one shared conv (folding)."""
  names = {}
  for key, layer in convs:
    if key in names and getattr(layer, "quantization_source", None) is None:
      raise ValueError(f"Two convolutions are both at {key!r}: fake quantisation keys its "
                       "ranges by layer names; give the layers distinct names.")
    names[key] = isinstance(layer, keras.layers.SeparableConv2D)
  return names


def quantize_model(model: keras.Model, ranges: FakeQuantRanges | None = None,
                   freeze_batch_norms: bool = True) -> FakeQuantRanges:
  """Makes every conv of `model` compute with fake-quantised input and weights (in place:
  each conv's `call` is replaced; variables and checkpoint layout unchanged) and returns the
  ranges layer (new, or `ranges` for a folded copy of a quantised model)."""
  convs = named_convs(model)
  names = conv_names(convs)
  if ranges is None:
    ranges = FakeQuantRanges(names, name="fake_quant")
  missing = sorted(n for n in names if f"{n}_input" not in ranges.ranges)
  if missing:
    raise ValueError(f"No fake-quant ranges for {len(missing)} conv(s) ({missing[:3]} ...): "
                     "the ranges come from the same model's quantization-aware training.")
  for key, layer in convs:
    object.__setattr__(layer, "call", _quantized_call(layer, key, ranges))
  if freeze_batch_norms:
    for layer in model.submodules:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False
  return ranges


def is_quantization_aware(model) -> bool:
  return isinstance(getattr(model, "fake_quant", None), FakeQuantRanges)


def ranges_seen(ranges: FakeQuantRanges) -> bool:
  """Whether every range has been set by at least one training batch."""
  return all(float(high.numpy()) > float(low.numpy()) for low, high in ranges.ranges.values())
