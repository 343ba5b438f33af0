"""Swish in the form TensorFlow's CPU graph rewrites fuse into the convolution before it.

`tf.nn.silu` (what tf_keras' "swish" calls) wraps `x * sigmoid(x)` in a custom gradient, so
its graph ends in an IdentityN and grappler's oneDNN remapper cannot match Conv2D +
FusedBatchNorm + Sigmoid + Mul: the swish then runs as a separate `_MklSwish` pass over the
whole activation tensor (D0 has 102 of them, ~11 % of its inference kernel time at batch 8).
The same product written as two plain ops is fused into the convolution (`_FusedConv2D` with
FusedBatchNorm and `_MklSwish` post-ops). Forward values are bit-identical to tf.nn.silu
(beta = 1); the gradient is the autodiff of the product (the same derivative, another
rounding). Inside `normalization.stock_inference_form()` (FLOP counting) it traces as
tf.nn.silu, whose extra `beta * x` Mul the profiler counts, as in the reference's count.

In a training pass (`Activation` layers and the BiFPN / heads pass `training`), large swish
tensors take `swish_for_training`: the same forward, its gradient one XLA-compiled loop
(D0 training step at batch 8 on a 2-core CPU: 1.10x; no conv fusion to keep there).
"""
import tensorflow as tf
import tf_keras as keras

from detlab.layers import normalization


@keras.saving.register_keras_serializable(package="detlab")
def swish(x):
  """x * sigmoid(x), without a custom gradient (see the module docstring)."""
  if not normalization.rewrites_allowed():
    return tf.nn.silu(x)
  return x * tf.math.sigmoid(x)


# Training's swish gradient runs as one XLA-compiled elementwise loop where the tensor is this
# large (static shape): autodiff through x * sigmoid(x) makes four passes over it (two Mul, a
# SigmoidGrad and an AddN) after the forward's two; each XLA shape costs a compile (~50 ms on
# CPU), which pays off only for big activations and long runs.
XLA_SWISH_MIN_ELEMENTS = 1 << 20


@tf.function(jit_compile=True)
def _swish_gradient(x, upstream):
  sigmoid = tf.math.sigmoid(x)
  return upstream * (sigmoid * (1.0 + x * (1.0 - sigmoid)))


@tf.autograph.experimental.do_not_convert
@tf.custom_gradient
def _swish_with_compiled_gradient(x):
  return x * tf.math.sigmoid(x), lambda upstream: _swish_gradient(x, upstream)


def swish_for_training(x):
  """swish(x) with its gradient as one compiled pass where x is large (static shape) and
  rewrites are allowed; the same values (float rounding apart) and derivative otherwise."""
  if (normalization.rewrites_allowed() and x.shape.is_fully_defined()
      and x.shape.num_elements() >= XLA_SWISH_MIN_ELEMENTS):
    return _swish_with_compiled_gradient(x)
  return swish(x)


def apply_activation(function, x, training=None):
  """function(x), with swish_for_training for `swish` in a training pass (training is True)."""
  if training is True and function is swish:
    return swish_for_training(x)
  return function(x)


@keras.saving.register_keras_serializable(package="detlab")
class Activation(keras.layers.Activation):
  """keras.layers.Activation that applies swish_for_training in a training pass."""

  def call(self, inputs, training=None):  # pylint: disable=arguments-differ
    return apply_activation(self.activation, inputs, training)


def activation_fn(activation):
  """`activation` (a tf_keras name or callable) with "swish"/"silu" mapped to `swish` above."""
  if isinstance(activation, str) and activation in ("swish", "silu"):
    return swish
  return activation


def activation_layer(activation, name: str | None = None) -> keras.layers.Activation:
  """Activation(activation_fn(activation)): weightless, named as before."""
  return Activation(activation_fn(activation), name=name)
