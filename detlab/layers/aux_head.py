"""Auxiliary classifier heads of the Inception family (used in training only).

Both pool 5x5 with stride 3 ('valid') and end in a fully connected layer whose input size
depends on the grid, so they need a static spatial size at their site.
"""
import tf_keras as keras

from detlab.layers.conv_bn import named_conv_bn_act


def _static_grid(x, prefix: str, minimum: int = 5) -> int:
  height, width = x.shape[1], x.shape[2]
  if height is None or width is None or min(height, width) < minimum:
    raise ValueError(
        f"The auxiliary classifier {prefix!r} needs a static grid of at least {minimum}x{minimum} "
        f"at its site, got {height}x{width}. Build the classifier at the paper's input size "
        f"(the default input_shape=None does that) or pass aux_logits=False.")
  return min(height, width)


def googlenet_aux_head(x, num_classes: int, prefix: str, dropout: float = 0.7):
  """GoogLeNet (Szegedy et al. 2014): avg-pool 5x5/3 -> 1x1 conv 128 + ReLU -> FC 1024 + ReLU
  -> dropout 0.7 -> FC num_classes. Input [B, H, W, C] (14x14 at 224); output logits [B, K]."""
  _static_grid(x, prefix)
  x = keras.layers.AveragePooling2D(5, strides=3, padding="valid", name=prefix + "_pool")(x)
  x = keras.layers.Conv2D(128, 1, activation="relu", name=prefix + "_conv")(x)
  x = keras.layers.Flatten(name=prefix + "_flatten")(x)
  x = keras.layers.Dense(1024, activation="relu", name=prefix + "_fc")(x)
  x = keras.layers.Dropout(dropout, name=prefix + "_dropout")(x)
  return keras.layers.Dense(num_classes, name=prefix + "_logits")(x)


def inception_aux_head(x, num_classes: int, prefix: str, sync_bn: bool = False):
  """Inception v3/v4/ResNet-v2 aux head with BN (Szegedy et al. 2015; TF-slim layout):
  avg-pool 5x5/3 -> 1x1 conv-BN-ReLU 128 -> kxk 'valid' conv-BN-ReLU 768 covering the whole
  pooled grid (k = 5 at the paper's size) -> FC num_classes. Output logits [B, K]."""
  _static_grid(x, prefix)
  x = keras.layers.AveragePooling2D(5, strides=3, padding="valid", name=prefix + "_pool")(x)
  x = named_conv_bn_act(x, 128, 1, prefix=prefix + "_proj", sync_bn=sync_bn)
  kernel = min(5, x.shape[1], x.shape[2])
  x = named_conv_bn_act(x, 768, kernel, padding="valid", prefix=prefix + f"_{kernel}x{kernel}",
                        sync_bn=sync_bn)
  x = keras.layers.Flatten(name=prefix + "_flatten")(x)
  return keras.layers.Dense(num_classes, name=prefix + "_logits")(x)
