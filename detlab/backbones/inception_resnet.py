"""Inception-ResNet v1 and v2 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact
of Residual Connections on Learning", 2016).

Residual Inception blocks: the branches are concatenated, a 1x1 conv *with bias and no
activation or BN* expands them back to the input width, the result is scaled (0.1-0.3,
configurable) and added to the input, then ReLU. No BN on top of the sums. Between the block
groups, Reduction-A (paper Fig. 7, with k, l, m, n of Table 1) and Reduction-B.

v2 mirrors `tf_keras.applications.InceptionResNetV2` layer for layer (stem + mixed_5b,
10 x block35, mixed_6a, 20 x block17, mixed_7a, 10 x block8 with the last one linear and
unscaled, conv_7b 1536) including names, so counts match and weights import by name; the aux
head (TF-slim layout) on the 17x17 grid runs only in training (loss weight 0.4).
v1 follows the paper's figures (Fig. 14 stem, Figs. 10/11/13 blocks, 5/10/5 repeats, k, l, m,
n = 192, 192, 256, 384, Fig. 12 Reduction-B) with the same conventions (last IR-C block
linear, BN without gamma, names in the keras style); no aux head.

Levels (include_top=False): v1 2/3/4/5 = 192/256/896/1792 channels; v2 = 192/320/1088/1536.
"""
import dataclasses

import tf_keras as keras

from detlab.backbones.classifier import ClassifierOrExtractor
from detlab.backbones.registration import registered_builder
from detlab.layers.conv_bn import KerasAutoNames, auto_named_conv_bn, conv_bn_act
from detlab.layers.inception_stem import inception_v3_stem
from detlab.layers.scaled_residual import ScaledResidual

NATIVE_SIZE = 299
AUX_LOSS_WEIGHT = 0.4
DEFAULT_SCALES = (0.17, 0.10, 0.20)  # block35, block17, block8 (keras / TF-slim / facenet)



def A(*convs) -> tuple:
  """A tower: a sequence of (filters, kernel) convs. A block or reduction is a tuple of towers."""
  return convs


@dataclasses.dataclass(frozen=True)
class InceptionResNetSpec:
  """One Inception-ResNet variant. In a reduction, each tower's last conv is 3x3 stride 2
  ('valid' in the classifier) and a 3x3/2 max-pool branch is appended."""
  stem_tail: str  # "mixed_5b" (v2: max-pool + Inception-A) or "conv256" (v1: conv 3x3/2 256)
  block35: tuple
  repeats35: int
  reduction_a: tuple
  block17: tuple
  repeats17: int
  reduction_b: tuple
  block8: tuple
  repeats8: int
  top_filters: int | None
  has_aux: bool


V1 = InceptionResNetSpec(
    stem_tail="conv256",
    block35=(A((32, 1)), A((32, 1), (32, 3)), A((32, 1), (32, 3), (32, 3))), repeats35=5,
    reduction_a=(A((384, 3)), A((192, 1), (192, 3), (256, 3))),  # n=384; k, l, m = 192, 192, 256
    block17=(A((128, 1)), A((128, 1), (128, (1, 7)), (128, (7, 1)))), repeats17=10,
    reduction_b=(A((256, 1), (384, 3)), A((256, 1), (256, 3)),
                 A((256, 1), (256, 3), (256, 3))),
    block8=(A((192, 1)), A((192, 1), (192, (1, 3)), (192, (3, 1)))), repeats8=5,
    top_filters=None, has_aux=False)

V2 = InceptionResNetSpec(
    stem_tail="mixed_5b",
    block35=(A((32, 1)), A((32, 1), (32, 3)), A((32, 1), (48, 3), (64, 3))), repeats35=10,
    reduction_a=(A((384, 3)), A((256, 1), (256, 3), (384, 3))),  # n=384; k, l, m = 256, 256, 384
    block17=(A((192, 1)), A((128, 1), (160, (1, 7)), (192, (7, 1)))), repeats17=20,
    reduction_b=(A((256, 1), (384, 3)), A((256, 1), (288, 3)),
                 A((256, 1), (288, 3), (320, 3))),
    block8=(A((192, 1)), A((192, 1), (224, (1, 3)), (256, (3, 1)))), repeats8=10,
    top_filters=1536, has_aux=True)


class _Builder:
  """Naming counter, padding mode and BN flag while the graph is built."""

  def __init__(self, padding: str, sync_bn: bool):
    self.names, self.padding, self.sync_bn = KerasAutoNames(), padding, sync_bn

  def conv(self, x, filters, kernel, strides=1, pad="same"):
    return auto_named_conv_bn(x, self.names, filters, kernel, strides=strides, padding=pad,
                              sync_bn=self.sync_bn)

  def max_pool(self, x):
    return keras.layers.MaxPooling2D(3, strides=2, padding=self.padding,
                                     name=self.names("max_pooling2d"))(x)

  def tower(self, x, convs, reduce: bool = False):
    """Convs in sequence; with `reduce` the last one has stride 2 and the mode's padding."""
    for i, (filters, kernel) in enumerate(convs):
      last = reduce and i == len(convs) - 1
      x = self.conv(x, filters, kernel, strides=2 if last else 1,
                    pad=self.padding if last else "same")
    return x

  def reduction(self, x, towers, name: str):
    outs = [self.tower(x, t, reduce=True) for t in towers] + [self.max_pool(x)]
    return keras.layers.Concatenate(name=name)(outs)

  def residual_block(self, x, towers, scale: float, block_name: str,
                     activation: str | None = "relu"):
    """x + scale * conv1x1_linear(concat(towers(x))), then ReLU. Shape preserved."""
    mixed = keras.layers.Concatenate(name=block_name + "_mixed")(
        [self.tower(x, t) for t in towers])
    up = conv_bn_act(mixed, x.shape[-1], 1, use_bn=False, use_bias=True, activation=None,
                     conv_name=block_name + "_conv")
    x = ScaledResidual(scale, name=self.names("custom_scale_layer"))([x, up])
    if activation is not None:
      x = keras.layers.Activation(activation, name=block_name + "_ac")(x)
    return x

  def mixed_5b(self, x):
    """v2 stem tail, an Inception-A module: 96 | 48 -> 5x5 64 | 64 -> 96 -> 96 | avg -> 64."""
    x = self.max_pool(x)
    b0 = self.conv(x, 96, 1)
    b1 = self.tower(x, ((48, 1), (64, 5)))
    b2 = self.tower(x, ((64, 1), (96, 3), (96, 3)))
    pool = keras.layers.AveragePooling2D(3, strides=1, padding="same",
                                         name=self.names("average_pooling2d"))(x)
    return keras.layers.Concatenate(name="mixed_5b")([b0, b1, b2, self.conv(pool, 64, 1)])


def build_inception_resnet(spec: InceptionResNetSpec, *, name: str, input_shape=None,
                           include_top: bool = False, num_classes: int = 1000,
                           aux_logits: bool = True, residual_scales=DEFAULT_SCALES,
                           dropout: float = 0.2, padding: str | None = None,
                           sync_bn: bool = False, min_level: int = 2,
                           max_level: int = 5) -> keras.Model:
  """Inception-ResNet as a classifier (include_top=True) or a `{str(level): tensor}` extractor.

  Input: float32 [B, S, S, 3] in [-1, 1]. residual_scales: (block35, block17, block8).
  padding None: 'valid' for the classifier (paper 299 geometry), 'same' for the extractor.
  input_shape None: (299, 299, 3) for the classifier, (None, None, 3) for the extractor.
  """
  top = ClassifierOrExtractor(include_top, num_classes, dropout, min_level, max_level, name)
  padding, inputs = top.input(padding, input_shape, NATIVE_SIZE)
  scale35, scale17, scale8 = residual_scales
  b = _Builder(padding, sync_bn)
  x = endpoints_2 = inception_v3_stem(inputs, b.names, padding, sync_bn)
  if spec.stem_tail == "mixed_5b":
    x = b.mixed_5b(x)
  else:
    x = b.conv(x, 256, 3, strides=2, pad=padding)
  endpoints = {"2": endpoints_2}

  for i in range(1, spec.repeats35 + 1):
    x = b.residual_block(x, spec.block35, scale35, f"block35_{i}")
  endpoints["3"] = x
  x = b.reduction(x, spec.reduction_a, "mixed_6a")
  for i in range(1, spec.repeats17 + 1):
    x = b.residual_block(x, spec.block17, scale17, f"block17_{i}")
  endpoints["4"] = x
  top.inception_aux_head(x, aux_logits and spec.has_aux, AUX_LOSS_WEIGHT, sync_bn)
  x = b.reduction(x, spec.reduction_b, "mixed_7a")
  for i in range(1, spec.repeats8 + 1):
    last = i == spec.repeats8
    x = b.residual_block(x, spec.block8, 1.0 if last else scale8, f"block8_{i}",
                         activation=None if last else "relu")
  if spec.top_filters:
    x = conv_bn_act(x, spec.top_filters, 1, bn_scale=False, sync_bn=sync_bn,
                    conv_name="conv_7b", bn_name="conv_7b_bn", act_name="conv_7b_ac")
  endpoints["5"] = x
  return top.model(x, endpoints)


inception_resnet_v1 = registered_builder(
    "inception_resnet_v1", "Inception-ResNet-v1 (see `build_inception_resnet` for arguments).",
    build_inception_resnet, spec=V1, name="inception_resnet_v1")
inception_resnet_v2 = registered_builder(
    "inception_resnet_v2", "Inception-ResNet-v2 (see `build_inception_resnet` for arguments).",
    build_inception_resnet, spec=V2, name="inception_resnet_v2")
