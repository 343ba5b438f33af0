"""BN-Inception / Inception v2 (Ioffe & Szegedy, "Batch Normalization", 2015, Figure 5).

GoogLeNet with BN before every nonlinearity (convs without bias, BN without gamma as in
TF-slim), every 5x5 replaced by two 3x3, average pooling in most pool branches, and two
stride-2 modules (3c, 4e in the paper) instead of max-pool layers between stages. Module
widths are those of TF-slim's `inception_v2` (paper Figure 5 with the pool projections that
make every 14x14 module output 576 channels). The paper's 224 geometry is 'same' throughout.

`stem="separable"` builds TF-slim's first layer instead of the paper's 7x7 conv-BN: a separable
7x7/2 (depthwise x8, pointwise to 64) with bias and ReLU, no BN -- what TF-slim's
`inception_v2` (and its published checkpoint) has; needed to import that checkpoint
(detlab.backbones.slim_import). No aux classifiers (TF-slim's reference has none). Classifier: global average pool, dropout,
FC. Levels (include_top=False): 2 = conv2 (192), 3 = 3b (320), 4 = 4d (576), 5 = 5b (1024).
"""
import dataclasses

import tf_keras as keras

from detlab.backbones.classifier import ClassifierOrExtractor
from detlab.backbones.registration import registered_builder
from detlab.layers.conv_bn import named_conv_bn_act


@dataclasses.dataclass(frozen=True)
class Module:
  """One BN-Inception module. n1x1 = 0 and strides 2: a grid-reduction module whose pool
  branch passes the input through (max-pool, no projection)."""
  name: str
  n1x1: int
  n3x3_reduce: int
  n3x3: int
  double3x3_reduce: int
  double3x3: int
  pool: str  # "avg" or "max"
  pool_proj: int
  strides: int = 1


# Paper Figure 5 rows, one stage per output level.
STAGES = (
    (Module("3a", 64, 64, 64, 64, 96, "avg", 32),
     Module("3b", 64, 64, 96, 64, 96, "avg", 64)),
    (Module("3c", 0, 128, 160, 64, 96, "max", 0, strides=2),
     Module("4a", 224, 64, 96, 96, 128, "avg", 128),
     Module("4b", 192, 96, 128, 96, 128, "avg", 128),
     Module("4c", 160, 128, 160, 128, 160, "avg", 96),
     Module("4d", 96, 128, 192, 160, 192, "avg", 96)),
    (Module("4e", 0, 128, 192, 192, 256, "max", 0, strides=2),
     Module("5a", 352, 192, 320, 160, 224, "avg", 128),
     Module("5b", 352, 192, 320, 192, 224, "max", 128)),
)
NATIVE_SIZE = 224


def bn_inception_module(x, m: Module, sync_bn: bool = False):
  """[B, H, W, C] -> [B, H/strides, W/strides, sum of branch widths] (C passes through when
  the module reduces the grid)."""
  p = f"inception_{m.name}"

  def conv(t, filters, kernel, suffix, strides=1):
    return named_conv_bn_act(t, filters, kernel, strides=strides, bn_scale=False,
                             sync_bn=sync_bn, prefix=f"{p}_{suffix}")

  branches = []
  if m.n1x1:
    branches.append(conv(x, m.n1x1, 1, "1x1"))
  b = conv(x, m.n3x3_reduce, 1, "3x3_reduce")
  branches.append(conv(b, m.n3x3, 3, "3x3", strides=m.strides))
  b = conv(x, m.double3x3_reduce, 1, "double3x3_reduce")
  b = conv(b, m.double3x3, 3, "double3x3a")
  branches.append(conv(b, m.double3x3, 3, "double3x3b", strides=m.strides))
  pool_cls = keras.layers.AveragePooling2D if m.pool == "avg" else keras.layers.MaxPooling2D
  pool = pool_cls(3, strides=m.strides, padding="same", name=f"{p}_pool")(x)
  branches.append(conv(pool, m.pool_proj, 1, "pool_proj") if m.pool_proj else pool)
  return keras.layers.Concatenate(name=f"{p}_output")(branches)


def build_inception_v2(*, input_shape=None, include_top: bool = False, num_classes: int = 1000,
                       dropout: float = 0.2, sync_bn: bool = False, min_level: int = 2,
                       max_level: int = 5, name: str = "inception_v2",
                       stem: str = "conv") -> keras.Model:
  """BN-Inception as a classifier (include_top=True) or a `{str(level): tensor}` extractor.

  Input: float32 [B, S, S, 3] in [-1, 1]; input_shape None: (224, 224, 3) for the classifier,
  (None, None, 3) for the extractor.
  """
  top = ClassifierOrExtractor(include_top, num_classes, dropout, min_level, max_level, name)
  _, inputs = top.input("same", input_shape, NATIVE_SIZE)

  def conv(t, filters, kernel, prefix, strides=1):
    return named_conv_bn_act(t, filters, kernel, strides=strides, bn_scale=False,
                             sync_bn=sync_bn, prefix=prefix)

  if stem == "conv":
    x = conv(inputs, 64, 7, "conv1_7x7", strides=2)
  elif stem == "separable":
    x = keras.layers.SeparableConv2D(64, 7, strides=2, padding="same", depth_multiplier=8,
                                     activation="relu", name="conv1_7x7_sep")(inputs)
  else:
    raise ValueError(f"stem must be 'conv' (paper) or 'separable' (TF-slim), got {stem!r}.")
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
  x = conv(x, 64, 1, "conv2_3x3_reduce")
  x = conv(x, 192, 3, "conv2_3x3")
  endpoints = {"2": x}
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
  for level, modules in enumerate(STAGES, start=3):
    for module in modules:
      x = bn_inception_module(x, module, sync_bn)
    endpoints[str(level)] = x
  return top.model(x, endpoints)


inception_v2 = registered_builder("inception_v2",
                                  "BN-Inception (see `build_inception_v2` for arguments).",
                                  build_inception_v2)
