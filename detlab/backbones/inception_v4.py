"""Inception v4 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", 2016; widths and aux head as TF-slim's `inception_v4`).

Stem (paper Fig. 3) -> 4 x Inception-A (35x35) -> Reduction-A (k, l, m, n = 192, 224, 256,
384) -> 7 x Inception-B (17x17) -> Reduction-B -> 3 x Inception-C (8x8) -> average pool ->
dropout 0.2 -> FC. Every conv: no bias -> BN (no gamma) -> ReLU. Layers are named after
TF-slim's scopes (`mixed_6b_b2_1x7_conv` ...). Aux head (TF-slim) on mixed_6h, training only.

Levels (include_top=False, 'same' padding): 2 = mixed_4a (192), 3 = mixed_5e (384),
4 = mixed_6h (1024), 5 = mixed_7d (1536).
"""
import tf_keras as keras

from detlab.backbones.classifier import ClassifierOrExtractor
from detlab.backbones.registration import registered_builder
from detlab.layers.conv_bn import named_conv_bn_act

NATIVE_SIZE = 299
AUX_LOSS_WEIGHT = 0.4


def _kernel_tag(kernel) -> str:
  rows, cols = (kernel, kernel) if isinstance(kernel, int) else kernel
  return f"{rows}x{cols}"


class _Builder:
  """Padding mode and BN flag while the graph is built."""

  def __init__(self, padding: str, sync_bn: bool):
    self.padding, self.sync_bn = padding, sync_bn

  def conv(self, x, filters: int, kernel, prefix: str, strides: int = 1, valid: bool = False):
    """conv-BN-ReLU; `valid` convs take the model's padding mode (paper 'V' convs)."""
    return named_conv_bn_act(x, filters, kernel, strides=strides, bn_scale=False,
                             padding=self.padding if valid else "same", sync_bn=self.sync_bn,
                             prefix=f"{prefix}_{_kernel_tag(kernel)}")

  def tower(self, x, convs, prefix: str, reduce_last: bool = False):
    """(filters, kernel) convs in sequence; `reduce_last`: the last is 3x3/2 'V'."""
    for i, (filters, kernel) in enumerate(convs):
      last = reduce_last and i == len(convs) - 1
      x = self.conv(x, filters, kernel, f"{prefix}_{i}", strides=2 if last else 1, valid=last)
    return x

  def max_pool(self, x, name: str):
    return keras.layers.MaxPooling2D(3, strides=2, padding=self.padding, name=name)(x)

  def avg_proj(self, x, filters: int, prefix: str):
    x = keras.layers.AveragePooling2D(3, strides=1, padding="same", name=prefix + "_pool")(x)
    return self.conv(x, filters, 1, prefix)

  def stem(self, x):
    """299x299x3 -> (71x71x192 stride-4 mixed_4a, 35x35x384 mixed_5a)."""
    x = self.conv(x, 32, 3, "conv_1a", strides=2, valid=True)
    x = self.conv(x, 32, 3, "conv_2a", valid=True)
    x = self.conv(x, 64, 3, "conv_2b")
    x = keras.layers.Concatenate(name="mixed_3a")(
        [self.max_pool(x, "mixed_3a_b0_pool"),
         self.conv(x, 96, 3, "mixed_3a_b1", strides=2, valid=True)])
    b0 = self.conv(self.conv(x, 64, 1, "mixed_4a_b0_0"), 96, 3, "mixed_4a_b0_1", valid=True)
    b1 = self.tower(x, ((64, 1), (64, (1, 7)), (64, (7, 1))), "mixed_4a_b1")
    b1 = self.conv(b1, 96, 3, "mixed_4a_b1_3", valid=True)
    mixed_4a = keras.layers.Concatenate(name="mixed_4a")([b0, b1])
    x = keras.layers.Concatenate(name="mixed_5a")(
        [self.conv(mixed_4a, 192, 3, "mixed_5a_b0", strides=2, valid=True),
         self.max_pool(mixed_4a, "mixed_5a_b1_pool")])
    return mixed_4a, x

  def inception_a(self, x, name: str):
    """35x35 -> 35x35x384: 96 | 64 -> 96 | 64 -> 96 -> 96 | avg -> 96."""
    return keras.layers.Concatenate(name=name)([
        self.conv(x, 96, 1, f"{name}_b0"),
        self.tower(x, ((64, 1), (96, 3)), f"{name}_b1"),
        self.tower(x, ((64, 1), (96, 3), (96, 3)), f"{name}_b2"),
        self.avg_proj(x, 96, f"{name}_b3")])

  def reduction_a(self, x, k=192, l=224, m=256, n=384):
    """35 -> 17, 384 -> 1024 channels (paper Fig. 7 / Table 1)."""
    return keras.layers.Concatenate(name="mixed_6a")([
        self.conv(x, n, 3, "mixed_6a_b0", strides=2, valid=True),
        self.tower(x, ((k, 1), (l, 3), (m, 3)), "mixed_6a_b1", reduce_last=True),
        self.max_pool(x, "mixed_6a_b2_pool")])

  def inception_b(self, x, name: str):
    """17x17 -> 17x17x1024 with 1x7 / 7x1 factorized towers."""
    return keras.layers.Concatenate(name=name)([
        self.conv(x, 384, 1, f"{name}_b0"),
        self.tower(x, ((192, 1), (224, (1, 7)), (256, (7, 1))), f"{name}_b1"),
        self.tower(x, ((192, 1), (192, (7, 1)), (224, (1, 7)), (224, (7, 1)), (256, (1, 7))),
                   f"{name}_b2"),
        self.avg_proj(x, 128, f"{name}_b3")])

  def reduction_b(self, x):
    """17 -> 8, 1024 -> 1536 channels (paper Fig. 8)."""
    return keras.layers.Concatenate(name="mixed_7a")([
        self.tower(x, ((192, 1), (192, 3)), "mixed_7a_b0", reduce_last=True),
        self.tower(x, ((256, 1), (256, (1, 7)), (320, (7, 1)), (320, 3)), "mixed_7a_b1",
                   reduce_last=True),
        self.max_pool(x, "mixed_7a_b2_pool")])

  def _split(self, x, prefix: str):
    """The expanded filter bank: 1x3 and 3x1 (256 each) side by side."""
    return keras.layers.Concatenate(name=prefix + "_split")(
        [self.conv(x, 256, (1, 3), prefix + "_a"), self.conv(x, 256, (3, 1), prefix + "_b")])

  def inception_c(self, x, name: str):
    """8x8 -> 8x8x1536: 256 | 384 -> [1x3, 3x1] | 384 -> 448 3x1 -> 512 1x3 -> [1x3, 3x1] |
    avg -> 256."""
    b0 = self.conv(x, 256, 1, f"{name}_b0")
    b1 = self._split(self.conv(x, 384, 1, f"{name}_b1_0"), f"{name}_b1")
    b2 = self.tower(x, ((384, 1), (448, (3, 1)), (512, (1, 3))), f"{name}_b2")
    b2 = self._split(b2, f"{name}_b2")
    return keras.layers.Concatenate(name=name)([b0, b1, b2, self.avg_proj(x, 256, f"{name}_b3")])


def build_inception_v4(*, input_shape=None, include_top: bool = False, num_classes: int = 1000,
                       aux_logits: bool = True, dropout: float = 0.2,
                       padding: str | None = None, sync_bn: bool = False, min_level: int = 2,
                       max_level: int = 5, name: str = "inception_v4") -> keras.Model:
  """Inception v4 as a classifier (include_top=True) or a `{str(level): tensor}` extractor.

  Input: float32 [B, S, S, 3] in [-1, 1]. padding None: 'valid' for the classifier (paper
  299 geometry), 'same' for the extractor. input_shape None: (299, 299, 3) / (None, None, 3).
  """
  top = ClassifierOrExtractor(include_top, num_classes, dropout, min_level, max_level, name)
  padding, inputs = top.input(padding, input_shape, NATIVE_SIZE)
  b = _Builder(padding, sync_bn)
  endpoints = {}
  endpoints["2"], x = b.stem(inputs)
  for i in range(4):
    x = b.inception_a(x, f"mixed_5{chr(ord('b') + i)}")
  endpoints["3"] = x
  x = b.reduction_a(x)
  for i in range(7):
    x = b.inception_b(x, f"mixed_6{chr(ord('b') + i)}")
  endpoints["4"] = x
  top.inception_aux_head(x, aux_logits, AUX_LOSS_WEIGHT, sync_bn)
  x = b.reduction_b(x)
  for i in range(3):
    x = b.inception_c(x, f"mixed_7{chr(ord('b') + i)}")
  endpoints["5"] = x
  return top.model(x, endpoints)


inception_v4 = registered_builder("inception_v4",
                                  "Inception v4 (see `build_inception_v4` for arguments).",
                                  build_inception_v4)
