"""MBConv and Fused-MBConv blocks (EfficientNet, EfficientNetV2), functional style.

Layer names follow `tf_keras.applications` (`block2a_expand_conv`, ...) so that weights can be
copied across by name.
"""
import tf_keras as keras

from detlab.layers.activations import activation_layer
from detlab.layers.depthwise import DepthwiseConv2D
from detlab.layers.normalization import BN_MOMENTUM, batch_norm
from detlab.layers.squeeze_excite import SqueezeWithInput


def conv_init() -> keras.initializers.Initializer:
  """He-normal in fan-out mode for convs, as the EfficientNet reference code.

  A fresh instance per layer: a shared unseeded instance gives every layer the same values.
  """
  return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out",
                                            distribution="truncated_normal")


def _squeeze_excite(x, filters_in: int, filters: int, se_ratio: float, activation: str,
                    prefix: str):
  """SE with the reduced width taken from the block's *input* filters (paper and keras); the
  squeeze also hands on x, for the one-pass training gradient (layers.squeeze_excite)."""
  filters_se = max(1, int(filters_in * se_ratio))
  x, se = SqueezeWithInput(name=prefix + "se_squeeze")(x)
  se = keras.layers.Reshape((1, 1, filters), name=prefix + "se_reshape")(se)
  se = keras.layers.Conv2D(filters_se, 1, padding="same", activation=activation,
                           kernel_initializer=conv_init(), name=prefix + "se_reduce")(se)
  se = keras.layers.Conv2D(filters, 1, padding="same", activation="sigmoid",
                           kernel_initializer=conv_init(), name=prefix + "se_expand")(se)
  return keras.layers.multiply([x, se], name=prefix + "se_excite")


def _project_and_residual(x, inputs, filters_in, filters_out, strides, drop_rate, prefix,
                          kernel_size=1, conv_strides=1, activation=None, sync_bn=False,
                          bn_momentum=BN_MOMENTUM):
  """Projection conv + BN, then the residual add when the block keeps shape (`strides` 1)."""
  x = keras.layers.Conv2D(filters_out, kernel_size, strides=conv_strides, padding="same",
                          use_bias=False, kernel_initializer=conv_init(),
                          name=prefix + "project_conv")(x)
  x = batch_norm(prefix + "project_bn", momentum=bn_momentum, synchronized=sync_bn)(x)
  if activation:
    x = activation_layer(activation, name=prefix + "project_activation")(x)
  if strides == 1 and filters_in == filters_out:
    if drop_rate > 0:
      # Stochastic depth: drop the whole residual branch per sample.
      x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
    x = keras.layers.add([x, inputs], name=prefix + "add")
  return x


def mbconv_block(inputs, *, filters_in: int, filters_out: int, kernel_size: int, strides: int,
                 expand_ratio: float, se_ratio: float, drop_rate: float, activation: str,
                 prefix: str, sync_bn: bool = False, bn_momentum: float = BN_MOMENTUM,
                 dwconv_name: str = "dwconv"):
  """Inverted residual: 1x1 expand -> depthwise kxk -> SE -> 1x1 project (+ residual).

  `dwconv_name`: keras apps call the depthwise conv `dwconv` in V1 and `dwconv2` in V2.
  """
  filters = filters_in * expand_ratio
  x = inputs
  if expand_ratio != 1:
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False,
                            kernel_initializer=conv_init(), name=prefix + "expand_conv")(x)
    x = batch_norm(prefix + "expand_bn", momentum=bn_momentum, synchronized=sync_bn)(x)
    x = activation_layer(activation, name=prefix + "expand_activation")(x)
  x = DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                      depthwise_initializer=conv_init(), name=prefix + dwconv_name)(x)
  x = batch_norm(prefix + "bn", momentum=bn_momentum, synchronized=sync_bn)(x)
  x = activation_layer(activation, name=prefix + "activation")(x)
  if 0 < se_ratio <= 1:
    x = _squeeze_excite(x, filters_in, filters, se_ratio, activation, prefix)
  return _project_and_residual(x, inputs, filters_in, filters_out, strides, drop_rate, prefix,
                               sync_bn=sync_bn, bn_momentum=bn_momentum)


def fused_mbconv_block(inputs, *, filters_in: int, filters_out: int, kernel_size: int,
                       strides: int, expand_ratio: float, se_ratio: float, drop_rate: float,
                       activation: str, prefix: str, sync_bn: bool = False,
                       bn_momentum: float = BN_MOMENTUM):
  """Fused-MBConv (EfficientNetV2): kxk expand conv replaces expand + depthwise.

  With expand_ratio 1 the single kxk conv is the projection (and carries the activation).
  """
  filters = filters_in * expand_ratio
  x = inputs
  if expand_ratio != 1:
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                            use_bias=False, kernel_initializer=conv_init(),
                            name=prefix + "expand_conv")(x)
    x = batch_norm(prefix + "expand_bn", momentum=bn_momentum, synchronized=sync_bn)(x)
    x = activation_layer(activation, name=prefix + "expand_activation")(x)
  if 0 < se_ratio <= 1:
    x = _squeeze_excite(x, filters_in, filters, se_ratio, activation, prefix)
  if expand_ratio == 1:
    return _project_and_residual(x, inputs, filters_in, filters_out, strides, drop_rate, prefix,
                                 kernel_size=kernel_size, conv_strides=strides,
                                 activation=activation, sync_bn=sync_bn,
                                 bn_momentum=bn_momentum)
  return _project_and_residual(x, inputs, filters_in, filters_out, strides, drop_rate, prefix,
                               sync_bn=sync_bn, bn_momentum=bn_momentum)
