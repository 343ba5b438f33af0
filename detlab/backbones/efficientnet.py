"""EfficientNet B0-B7 (Tan & Le, 2019) as a classifier and a multi-level feature extractor.

One family definition -- the B0 block table -- scaled by each variant's (width, depth,
resolution, dropout) coefficients with the paper's filter/repeat rounding.
`build_efficientnet` also builds EfficientNetV2: `efficientnet_v2.py` passes its block tables
(Fused-MBConv stages), channel rounding, BN momentum and layer names.

EfficientNet-Lite0..4 (the TPU repo's `efficientnet_lite_builder`, which google/automl's
EfficientDet-Lite uses) are the same B0 table built with three knobs: no squeeze-excite,
ReLU6, and a fixed stem and head (stem 32 and top 1280 channels unscaled, and the first and
last stage keep their single block at any depth coefficient). Their weights expect pixels
normalised as (x - 127) / 128 (`conventions.EFFICIENTNET_LITE`).
"""
import dataclasses
import math
from typing import Callable

import tf_keras as keras

from detlab.backbones.contract import features_model
from detlab.backbones.registration import registered_builder
from detlab.layers import batch_norm, fused_mbconv_block, mbconv_block
from detlab.layers.activations import activation_layer
from detlab.layers.functional import functional_model
from detlab.layers.mbconv import conv_init
from detlab.layers.normalization import BN_MOMENTUM


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One stage of the block table (before width/depth scaling)."""
  kernel_size: int
  repeats: int
  filters_in: int
  filters_out: int
  expand_ratio: int
  strides: int
  se_ratio: float
  fused: bool = False


# EfficientNet-B0 (paper Table 1): MBConv1 k3x3 16, MBConv6 k3 24, k5 40, k3 80, k5 112, k5 192, k3 320.
B0_BLOCKS = (
    BlockSpec(3, 1, 32, 16, 1, 1, 0.25),
    BlockSpec(3, 2, 16, 24, 6, 2, 0.25),
    BlockSpec(5, 2, 24, 40, 6, 2, 0.25),
    BlockSpec(3, 3, 40, 80, 6, 2, 0.25),
    BlockSpec(5, 3, 80, 112, 6, 1, 0.25),
    BlockSpec(5, 4, 112, 192, 6, 2, 0.25),
    BlockSpec(3, 1, 192, 320, 6, 1, 0.25),
)

# variant -> (width, depth, resolution, dropout), from the paper / reference code.
V1_SCALING = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


# EfficientNet-Lite variant -> (width, depth, resolution, dropout), efficientnet_lite_builder's
# `efficientnet_lite_params`.
LITE_SCALING = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
  """Scales channels by `width`, rounding to a multiple of `divisor` (never down by > 10 %)."""
  filters *= width
  new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new_filters < 0.9 * filters:
    new_filters += divisor
  return int(new_filters)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


def block_prefix(stage: int, index: int) -> str:
  """`block{stage}{letters}_` with letters a..z, then aa, ab, ... (V2-XL has 32 blocks in a stage).

  Identical to keras apps' names for the first 26 blocks of a stage.
  """
  letters = ""
  index += 1
  while index > 0:
    index, rem = divmod(index - 1, 26)
    letters = chr(97 + rem) + letters
  return f"block{stage}{letters}_"


def drop_rates(total_blocks: int, drop_connect_rate: float) -> list[float]:
  """Stochastic-depth rate per block i = 0..N-1: `drop_connect_rate * i / N`.

  As keras apps (`drop_connect_rate * b / blocks`) and google/automl's efficientnet_model
  (survival 1 - rate * idx / len(blocks)): linear from 0, one step short of the full rate at
  the last block.
  """
  return [drop_connect_rate * i / max(1, total_blocks) for i in range(total_blocks)]


def scale_blocks(blocks, width: float, depth: float,
                 filters_fn: Callable[[float], int] | None = None,
                 fixed_ends: bool = False) -> list[BlockSpec]:
  """The block table with filters rounded by `filters_fn` (default: V1 `round_filters` at
  `width`) and repeats ceil-scaled by `depth`; `fixed_ends`: the first and last stage keep
  their unscaled repeats (EfficientNet-Lite's `fix_head_stem`)."""
  filters_fn = filters_fn or (lambda f: round_filters(f, width))
  last = len(blocks) - 1
  return [dataclasses.replace(
      b, filters_in=filters_fn(b.filters_in), filters_out=filters_fn(b.filters_out),
      repeats=b.repeats if fixed_ends and i in (0, last) else round_repeats(b.repeats, depth))
          for i, b in enumerate(blocks)]


def build_efficientnet(blocks, *, width: float, depth: float, dropout: float, name: str,
                       top_filters: int = 1280, drop_connect_rate: float = 0.2,
                       activation: str = "swish", bn_momentum: float = BN_MOMENTUM,
                       filters_fn: Callable[[float], int] | None = None,
                       dwconv_name: str = "dwconv", input_shape=(None, None, 3),
                       include_top: bool = False, num_classes: int = 1000,
                       sync_bn: bool = False, depth_divisor: int = 8, min_level: int = 2,
                       max_level: int = 5, squeeze_excite: bool = True,
                       fixed_stem_head: bool = False) -> keras.Model:
  """Builds an EfficientNet (V1 or V2) network from a block table.

  The stem width is the first stage's (rounded) input filters (32 for V1, as the paper).
  Args:
    blocks: the unscaled block table (`BlockSpec`s; `fused=True` for Fused-MBConv stages).
    bn_momentum: 0.99 for V1, 0.9 for V2 (epsilon is 1e-3 in both).
    filters_fn: unscaled channels -> scaled channels; default V1's `round_filters` at `width`
      and `depth_divisor` (V2 passes its own rounding).
    dwconv_name: keras apps' name of the MBConv depthwise conv (`dwconv` V1, `dwconv2` V2).
    include_top: False -> a feature extractor returning `{str(level): [B, ceil(S/2^l), ., C_l]}`
      for min_level..max_level (the last level is the last block, before `top_conv`);
      True -> a classifier returning logits [B, num_classes].
    activation: 'swish' (V1, V2) or e.g. 'relu6' (Lite), everywhere in the network.
    squeeze_excite: False drops every block's SE (Lite), whatever the table's se_ratio.
    fixed_stem_head: the stem and `top_filters` are not width-scaled, and the first and last
      stage's repeats not depth-scaled (Lite's `fix_head_stem`).
  Input: preprocessed images, float32 [B, S, S, 3] (ImageNet mean/std normalized for V1).
  """
  filters_fn = filters_fn or (lambda f: round_filters(f, width, depth_divisor))
  stem_filters = blocks[0].filters_in if fixed_stem_head else filters_fn(blocks[0].filters_in)

  def bn(layer_name: str) -> keras.layers.Layer:
    return batch_norm(layer_name, momentum=bn_momentum, synchronized=sync_bn)

  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Conv2D(stem_filters, 3, strides=2, padding="same",
                          use_bias=False, kernel_initializer=conv_init(),
                          name="stem_conv")(inputs)
  x = bn("stem_bn")(x)
  x = activation_layer(activation, name="stem_activation")(x)

  specs = scale_blocks(blocks, width, depth, filters_fn, fixed_ends=fixed_stem_head)
  if not squeeze_excite:
    specs = [dataclasses.replace(s, se_ratio=0.0) for s in specs]
  # The first block reads the stem (with a fixed stem its table width can differ; the
  # reference's count is the same: an expand-ratio-1 block sizes nothing by its input width).
  specs[0] = dataclasses.replace(specs[0], filters_in=stem_filters)
  rates = drop_rates(sum(s.repeats for s in specs), drop_connect_rate)
  endpoints, level, block_index = {}, 1, 0
  for stage, spec in enumerate(specs):
    for j in range(spec.repeats):
      first = j == 0
      strides = spec.strides if first else 1
      if strides == 2:
        endpoints[str(level)] = x  # last tensor at the finer level
        level += 1
      common = dict(filters_in=spec.filters_in if first else spec.filters_out,
                    filters_out=spec.filters_out, kernel_size=spec.kernel_size,
                    strides=strides, expand_ratio=spec.expand_ratio, se_ratio=spec.se_ratio,
                    drop_rate=rates[block_index], activation=activation,
                    prefix=block_prefix(stage + 1, j), sync_bn=sync_bn,
                    bn_momentum=bn_momentum)
      if spec.fused:
        x = fused_mbconv_block(x, **common)
      else:
        x = mbconv_block(x, dwconv_name=dwconv_name, **common)
      block_index += 1
  endpoints[str(level)] = x

  if not include_top:
    return features_model(inputs, endpoints, min_level, max_level, name=name)
  top = top_filters if fixed_stem_head else filters_fn(top_filters)
  x = keras.layers.Conv2D(top, 1, padding="same", use_bias=False,
                          kernel_initializer=conv_init(), name="top_conv")(x)
  x = bn("top_bn")(x)
  x = activation_layer(activation, name="top_activation")(x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  if dropout > 0:
    x = keras.layers.Dropout(dropout, name="top_dropout")(x)
  # Uniform fan-out init with scale 1/3, as the reference code.
  logits = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.VarianceScaling(
      scale=1.0 / 3.0, mode="fan_out", distribution="uniform"), name="predictions")(x)
  return functional_model(inputs, logits, name=name)


def efficientnet(variant: str, **kwargs) -> keras.Model:
  """EfficientNet-`variant` ('b0' ... 'b7'); kwargs as `build_efficientnet`."""
  if variant not in V1_SCALING:
    raise ValueError(f"Unknown EfficientNet variant {variant!r}; choose one of "
                     f"{sorted(V1_SCALING)}.")
  width, depth, _, dropout = V1_SCALING[variant]
  kwargs.setdefault("dropout", dropout)
  return build_efficientnet(B0_BLOCKS, width=width, depth=depth,
                            name=f"efficientnet-{variant}", **kwargs)


def efficientnet_lite(variant: str, **kwargs) -> keras.Model:
  """EfficientNet-`variant` ('lite0' ... 'lite4'): the B0 table without squeeze-excite, ReLU6,
  fixed stem and head; kwargs as `build_efficientnet`."""
  if variant not in LITE_SCALING:
    raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose one of "
                     f"{sorted(LITE_SCALING)}.")
  width, depth, _, dropout = LITE_SCALING[variant]
  kwargs.setdefault("dropout", dropout)
  kwargs.setdefault("activation", "relu6")
  return build_efficientnet(B0_BLOCKS, width=width, depth=depth, squeeze_excite=False,
                            fixed_stem_head=True, name=f"efficientnet-{variant}", **kwargs)


def native_resolution(variant: str) -> int:
  return {**V1_SCALING, **LITE_SCALING}[variant][2]


# efficientnet_b0 ... efficientnet_b7: gin-registered builders (`@efficientnet_b0`), one per
# V1_SCALING entry, in its order.
(efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3, efficientnet_b4,
 efficientnet_b5, efficientnet_b6, efficientnet_b7) = (
     registered_builder(f"efficientnet_{v}",
                        f"EfficientNet-{v.upper()} (see `build_efficientnet` for arguments).",
                        efficientnet, variant=v) for v in V1_SCALING)

# efficientnet_lite0 ... efficientnet_lite4, likewise one per LITE_SCALING entry.
(efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, efficientnet_lite3,
 efficientnet_lite4) = (
     registered_builder(f"efficientnet_{v}",
                        f"EfficientNet-{v.capitalize()} (see `efficientnet_lite`).",
                        efficientnet_lite, variant=v) for v in LITE_SCALING)
