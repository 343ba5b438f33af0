"""Inception v3 (Szegedy et al., "Rethinking the Inception Architecture", 2015).

3x3-conv stem; three 35x35 modules (5x5 and double-3x3 towers); efficient grid reduction
(stride-2 convs in parallel with max-pool); four 17x17 modules with factorized 1x7/7x1 convs;
a second reduction; two 8x8 modules with expanded filter banks (1x3 and 3x1 side by side).
Every conv: no bias -> BN (no gamma) -> ReLU.

Layer structure, creation order and names mirror `tf_keras.applications.InceptionV3` (whose
conv/BN layers are unnamed, hence `conv2d_i` / `batch_normalization_i`), so parameter counts
match exactly and weights import by name. The aux head (paper, with BN) sits on mixed7 and
runs only in training (loss weight 0.4, TF-slim's training recipe).

Levels (include_top=False, 'same' padding): 2 = conv-192 of the stem (192), 3 = mixed2 (288),
4 = mixed7 (768), 5 = mixed10 (2048).
"""
import tf_keras as keras

from detlab.backbones.classifier import ClassifierOrExtractor
from detlab.backbones.registration import registered_builder
from detlab.layers.conv_bn import KerasAutoNames, auto_named_conv_bn
from detlab.layers.inception_stem import inception_v3_stem

NATIVE_SIZE = 299
AUX_LOSS_WEIGHT = 0.4


class _Builder:
  """Holds the naming counter, padding mode and BN flag while the graph is built."""

  def __init__(self, padding: str, sync_bn: bool):
    self.names, self.padding, self.sync_bn = KerasAutoNames(), padding, sync_bn

  def conv(self, x, filters: int, rows: int, cols: int, strides: int = 1, pad: str = "same"):
    return auto_named_conv_bn(x, self.names, filters, (rows, cols), strides=strides,
                              padding=pad, sync_bn=self.sync_bn)

  def avg_pool(self, x):
    return keras.layers.AveragePooling2D(3, strides=1, padding="same",
                                         name=self.names("average_pooling2d"))(x)

  def max_pool(self, x):
    return keras.layers.MaxPooling2D(3, strides=2, padding=self.padding,
                                     name=self.names("max_pooling2d"))(x)

  def module_35(self, x, pool_proj: int, name: str):
    """35x35 module (paper Fig. 5): 64 | 48 -> 5x5 64 | 64 -> 3x3 96 -> 3x3 96 | pool -> proj."""
    b1 = self.conv(x, 64, 1, 1)
    b5 = self.conv(self.conv(x, 48, 1, 1), 64, 5, 5)
    b3 = self.conv(self.conv(self.conv(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
    bp = self.conv(self.avg_pool(x), pool_proj, 1, 1)
    return keras.layers.Concatenate(name=name)([b1, b5, b3, bp])

  def reduction_35(self, x):
    """35 -> 17 grid reduction (paper Fig. 10): 3x3/2 384 | 64 -> 96 -> 3x3/2 96 | max-pool."""
    b3 = self.conv(x, 384, 3, 3, strides=2, pad=self.padding)
    bd = self.conv(self.conv(x, 64, 1, 1), 96, 3, 3)
    bd = self.conv(bd, 96, 3, 3, strides=2, pad=self.padding)
    return keras.layers.Concatenate(name="mixed3")([b3, bd, self.max_pool(x)])

  def module_17(self, x, c7: int, name: str):
    """17x17 module with n=7 factorization (paper Fig. 6), inner width c7."""
    b1 = self.conv(x, 192, 1, 1)
    b7 = self.conv(self.conv(self.conv(x, c7, 1, 1), c7, 1, 7), 192, 7, 1)
    bd = self.conv(x, c7, 1, 1)
    for filters, (rows, cols) in ((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))):
      bd = self.conv(bd, filters, rows, cols)
    bp = self.conv(self.avg_pool(x), 192, 1, 1)
    return keras.layers.Concatenate(name=name)([b1, b7, bd, bp])

  def reduction_17(self, x):
    """17 -> 8 grid reduction: 192 -> 3x3/2 320 | 192 -> 1x7 -> 7x1 -> 3x3/2 192 | max-pool."""
    b3 = self.conv(self.conv(x, 192, 1, 1), 320, 3, 3, strides=2, pad=self.padding)
    b7 = self.conv(self.conv(self.conv(x, 192, 1, 1), 192, 1, 7), 192, 7, 1)
    b7 = self.conv(b7, 192, 3, 3, strides=2, pad=self.padding)
    return keras.layers.Concatenate(name="mixed8")([b3, b7, self.max_pool(x)])

  def module_8(self, x, index: int):
    """8x8 module with expanded filter banks (paper Fig. 7)."""
    b1 = self.conv(x, 320, 1, 1)
    b3 = self.conv(x, 384, 1, 1)
    b3 = keras.layers.Concatenate(name=f"mixed9_{index}")(
        [self.conv(b3, 384, 1, 3), self.conv(b3, 384, 3, 1)])
    bd = self.conv(self.conv(x, 448, 1, 1), 384, 3, 3)
    bd = keras.layers.Concatenate(name=self.names("concatenate"))(
        [self.conv(bd, 384, 1, 3), self.conv(bd, 384, 3, 1)])
    bp = self.conv(self.avg_pool(x), 192, 1, 1)
    return keras.layers.Concatenate(name=f"mixed{9 + index}")([b1, b3, bd, bp])


def build_inception_v3(*, input_shape=None, include_top: bool = False, num_classes: int = 1000,
                       aux_logits: bool = True, dropout: float = 0.2,
                       padding: str | None = None, sync_bn: bool = False, min_level: int = 2,
                       max_level: int = 5, name: str = "inception_v3") -> keras.Model:
  """Inception v3 as a classifier (include_top=True) or a `{str(level): tensor}` extractor.

  Input: float32 [B, S, S, 3] in [-1, 1] (keras' `inception_v3.preprocess_input`).
  padding: None -> 'valid' for the classifier (paper/keras 299 geometry), 'same' for the
  extractor (level l is ceil(S/2^l)). input_shape None: (299, 299, 3) / (None, None, 3).
  """
  top = ClassifierOrExtractor(include_top, num_classes, dropout, min_level, max_level, name)
  padding, inputs = top.input(padding, input_shape, NATIVE_SIZE)
  b = _Builder(padding, sync_bn)
  endpoints = {}
  x = endpoints["2"] = inception_v3_stem(inputs, b.names, padding, sync_bn)
  x = b.max_pool(x)
  for i, pool_proj in enumerate((32, 64, 64)):
    x = b.module_35(x, pool_proj, f"mixed{i}")
  endpoints["3"] = x
  x = b.reduction_35(x)
  for i, c7 in enumerate((128, 160, 160, 192)):
    x = b.module_17(x, c7, f"mixed{4 + i}")
  endpoints["4"] = x
  top.inception_aux_head(x, aux_logits, AUX_LOSS_WEIGHT, sync_bn)
  x = b.reduction_17(x)
  for i in range(2):
    x = b.module_8(x, i)
  endpoints["5"] = x
  return top.model(x, endpoints)


inception_v3 = registered_builder("inception_v3",
                                  "Inception v3 (see `build_inception_v3` for arguments).",
                                  build_inception_v3)
