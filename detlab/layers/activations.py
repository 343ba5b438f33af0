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


def activation_fn(activation):
  """`activation` (a tf_keras name or callable) with "swish"/"silu" mapped to `swish` above."""
  if isinstance(activation, str) and activation in ("swish", "silu"):
    return swish
  return activation


def activation_layer(activation, name: str | None = None) -> keras.layers.Activation:
  """keras.layers.Activation(activation_fn(activation)): weightless, named as before."""
  return keras.layers.Activation(activation_fn(activation), name=name)
