"""Conv -> BatchNorm -> activation, the unit every Inception-family network is made of.

Also `KerasAutoNames`, which hands out the names tf_keras gives *unnamed* layers in a fresh
session (`conv2d`, `conv2d_1`, ...). The keras applications InceptionV3, InceptionResNetV2 and
Xception leave many layers unnamed; naming ours the same way is what lets weights be copied
across by layer name.
"""
import collections

import tf_keras as keras

from detlab.layers.normalization import BN_EPSILON, BN_MOMENTUM, batch_norm


class KerasAutoNames:
  """Yields tf_keras' fresh-session auto names per base: `conv2d`, `conv2d_1`, `conv2d_2`, ..."""

  def __init__(self):
    self._counts: collections.Counter = collections.Counter()

  def __call__(self, base: str) -> str:
    index = self._counts[base]
    self._counts[base] += 1
    return base if index == 0 else f"{base}_{index}"


def conv_bn_act(x, filters: int, kernel_size, *, strides=1, padding: str = "same",
                activation: str | None = "relu", use_bn: bool = True,
                bn_scale: bool = True, use_bias: bool | None = None,
                conv_name: str, bn_name: str | None = None, act_name: str | None = None,
                bn_momentum: float = BN_MOMENTUM, bn_epsilon: float = BN_EPSILON,
                sync_bn: bool = False):
  """Conv2D (no bias when followed by BN) -> BN -> activation.

  Args:
    x: [B, H, W, C_in] tensor.
    kernel_size: int or (rows, cols), e.g. (1, 7) for the factorized Inception convs.
    use_bn: False gives conv (with bias) -> activation, as in the original GoogLeNet.
    bn_scale: False omits BN's gamma (the TF-slim / keras Inception convention: a ReLU follows,
      so a scale would be redundant).
    activation: None for a linear output (the Inception-ResNet 1x1 filter expansion).
  Returns: [B, H', W', filters].
  """
  if use_bias is None:
    use_bias = not use_bn
  x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                          use_bias=use_bias, name=conv_name)(x)
  if use_bn:
    x = batch_norm(bn_name, momentum=bn_momentum, epsilon=bn_epsilon, scale=bn_scale,
                   synchronized=sync_bn)(x)
  if activation is not None:
    x = keras.layers.Activation(activation, name=act_name)(x)
  return x


def named_conv_bn_act(x, filters: int, kernel_size, *, prefix: str, **kwargs):
  """`conv_bn_act` with layers named `{prefix}_conv`, `{prefix}_bn`, `{prefix}_relu`."""
  return conv_bn_act(x, filters, kernel_size, conv_name=prefix + "_conv",
                     bn_name=prefix + "_bn", act_name=prefix + "_relu", **kwargs)


def auto_named_conv_bn(x, namer: KerasAutoNames, filters: int, kernel_size, *, strides=1,
                       padding: str = "same", activation: str | None = "relu",
                       sync_bn: bool = False):
  """The unnamed conv2d_bn unit of keras' InceptionV3 / InceptionResNetV2: conv (no bias) ->
  BN without gamma -> ReLU, named `conv2d_i`, `batch_normalization_i`, `activation_i`."""
  return conv_bn_act(x, filters, kernel_size, strides=strides, padding=padding,
                     activation=activation, bn_scale=False, sync_bn=sync_bn,
                     conv_name=namer("conv2d"), bn_name=namer("batch_normalization"),
                     act_name=namer("activation") if activation else None)
