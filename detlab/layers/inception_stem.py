"""The 3x3-conv stem shared by Inception v3 and Inception-ResNet v1/v2 (up to stride 4)."""
import tf_keras as keras

from detlab.layers.conv_bn import KerasAutoNames, auto_named_conv_bn


def inception_v3_stem(x, namer: KerasAutoNames, padding: str = "valid", sync_bn: bool = False):
  """299x299x3 -> 71x71x192, stride 4 ('valid'; 'same' gives ceil(S/4)).

  conv 32 3x3/2, conv 32 3x3, conv 64 3x3 (same), max-pool 3x3/2, conv 80 1x1, conv 192 3x3.
  The caller does the last stride-2 step (v3 / ResNet-v2: max-pool; ResNet-v1: conv 256).
  Layers named as keras' unnamed layers (see `KerasAutoNames`).
  """
  def conv(t, filters, kernel, strides=1, pad="same"):
    return auto_named_conv_bn(t, namer, filters, kernel, strides=strides, padding=pad,
                              sync_bn=sync_bn)

  x = conv(x, 32, 3, strides=2, pad=padding)
  x = conv(x, 32, 3, pad=padding)
  x = conv(x, 64, 3)
  x = keras.layers.MaxPooling2D(3, strides=2, padding=padding, name=namer("max_pooling2d"))(x)
  x = conv(x, 80, 1, pad=padding)
  return conv(x, 192, 3, pad=padding)
