"""EfficientNetV2 B0-B3, S, M, L, XL (Tan & Le, 2021): classifier and multi-level feature extractor.

Differences from V1 (`efficientnet.py`), all as in the paper's reference code and keras apps:
- Fused-MBConv (one kxk conv instead of 1x1 expand + depthwise) in the early stages, MBConv
  with SE later; every kernel is 3x3; the first stages have no SE.
- Scaling is non-uniform: S/M/L/XL each have their own block table (later stages get more
  layers); B0-B3 scale the base table uniformly by (width, depth) as V1 does.
- Channel rounding has no "+divisor when rounded down by > 10 %" step and a `min_depth` floor.
- BatchNorm momentum 0.9 (epsilon 1e-3 as V1); the depthwise conv is named `dwconv2`.
Stochastic depth grows linearly with the block index, rate * i / N (V1's `drop_rates`, as keras
apps and the reference code); it does not change inference or weights.
The network itself is built by V1's `build_efficientnet` (stem, block loop, top); this file
holds only V2's tables, rounding and defaults.
"""
import dataclasses

import tf_keras as keras

# block_prefix and drop_rates are shared with V1; re-exported here for V2 users.
from detlab.backbones.efficientnet import (BlockSpec, block_prefix,  # noqa: F401
                                           build_efficientnet, drop_rates)
from detlab.backbones.registration import registered_builder

# BatchNorm momentum of every V2 model (keras apps / reference code); epsilon stays 1e-3.
V2_BN_MOMENTUM = 0.9


# The stage pattern of every V2 block table: (Fused-MBConv?, expand ratio, stride) per stage;
# the seventh stage only in M/L/XL. Every kernel is 3x3; Fused-MBConv stages have no SE,
# MBConv stages SE 0.25. The tables differ only in each stage's layers and output channels.
V2_STAGE_PATTERN = ((True, 1, 1), (True, 4, 2), (True, 4, 2), (False, 4, 2), (False, 6, 1),
                    (False, 6, 2), (False, 6, 1))


def v2_blocks(stem: int, *stages: tuple[int, int]) -> tuple[BlockSpec, ...]:
  """A V2 block table from the stem width and each stage's (layers, output channels), stages
  following `V2_STAGE_PATTERN`; a stage's input is the previous stage's output (the stem's
  for the first)."""
  if len(stages) > len(V2_STAGE_PATTERN):
    raise ValueError(f"V2 tables have at most {len(V2_STAGE_PATTERN)} stages, got {len(stages)}.")
  table, filters_in = [], stem
  for (fused, expand_ratio, strides), (repeats, filters_out) in zip(V2_STAGE_PATTERN, stages):
    table.append(BlockSpec(3, repeats, filters_in, filters_out, expand_ratio, strides,
                           0.0 if fused else 0.25, fused=fused))
    filters_in = filters_out
  return tuple(table)


# (layers, output channels) per stage after the stem width.
# Base table of the B-variants (reference code `v2_base_block`), scaled like V1.
V2_BASE_BLOCKS = v2_blocks(32, (1, 16), (2, 32), (2, 48), (3, 96), (5, 112), (8, 192))
# Paper Table 4 (EfficientNetV2-S).
V2_S_BLOCKS = v2_blocks(24, (2, 24), (4, 48), (4, 64), (6, 128), (9, 160), (15, 256))
V2_M_BLOCKS = v2_blocks(24, (3, 24), (5, 48), (5, 80), (7, 160), (14, 176), (18, 304), (5, 512))
V2_L_BLOCKS = v2_blocks(32, (4, 32), (7, 64), (7, 96), (10, 192), (19, 224), (25, 384), (7, 640))
# XL (reference code `v2_xl_block`; ImageNet-21k pretraining only, not in keras apps).
V2_XL_BLOCKS = v2_blocks(32, (4, 32), (8, 64), (8, 96), (16, 192), (24, 256), (32, 512), (8, 640))


@dataclasses.dataclass(frozen=True)
class V2Variant:
  """One variant: its block table, scaling and the paper's train/eval sizes and dropout."""
  blocks: tuple
  width: float
  depth: float
  train_size: int
  eval_size: int
  dropout: float


# Reference code `efficientnetv2_params` (keras apps use dropout 0.2 for all; paper values here).
V2_VARIANTS = {
    "b0": V2Variant(V2_BASE_BLOCKS, 1.0, 1.0, 192, 224, 0.2),
    "b1": V2Variant(V2_BASE_BLOCKS, 1.0, 1.1, 192, 240, 0.2),
    "b2": V2Variant(V2_BASE_BLOCKS, 1.1, 1.2, 208, 260, 0.3),
    "b3": V2Variant(V2_BASE_BLOCKS, 1.2, 1.4, 240, 300, 0.3),
    "s": V2Variant(V2_S_BLOCKS, 1.0, 1.0, 300, 384, 0.2),
    "m": V2Variant(V2_M_BLOCKS, 1.0, 1.0, 384, 480, 0.3),
    "l": V2Variant(V2_L_BLOCKS, 1.0, 1.0, 384, 480, 0.4),
    "xl": V2Variant(V2_XL_BLOCKS, 1.0, 1.0, 384, 512, 0.4),
}


def round_filters_v2(filters: float, width: float, divisor: int = 8,
                     min_depth: int | None = 8) -> int:
  """Scales channels by `width` to the nearest multiple of `divisor`, at least `min_depth`.

  Unlike V1's rounding there is no correction when rounding down by more than 10 %.
  """
  filters *= width
  minimum = min_depth or divisor
  return int(max(minimum, int(filters + divisor / 2) // divisor * divisor))


def build_efficientnet_v2(blocks, *, width: float, depth: float,
                          bn_momentum: float = V2_BN_MOMENTUM, depth_divisor: int = 8,
                          min_depth: int | None = 8, **kwargs) -> keras.Model:
  """`build_efficientnet` with V2's rounding (`round_filters_v2`), BN momentum and `dwconv2`.

  kwargs as `build_efficientnet` (dropout, name, include_top, input_shape, ...). Input:
  float32 [B, S, S, 3], already preprocessed (see `weight_import.keras_preprocessing`:
  ImageNet mean/std for B0-B3, [-1, 1] for S/M/L/XL when using keras weights).
  """
  return build_efficientnet(
      blocks, width=width, depth=depth, bn_momentum=bn_momentum, depth_divisor=depth_divisor,
      filters_fn=lambda f: round_filters_v2(f, width, depth_divisor, min_depth),
      dwconv_name="dwconv2", **kwargs)


def efficientnet_v2(variant: str, **kwargs) -> keras.Model:
  """EfficientNetV2-`variant` ('b0'-'b3', 's', 'm', 'l', 'xl').

  kwargs as `build_efficientnet_v2`; the classifier dropout defaults to the variant's.
  """
  if variant not in V2_VARIANTS:
    raise ValueError(f"Unknown EfficientNetV2 variant {variant!r}; choose one of "
                     f"{list(V2_VARIANTS)}.")
  spec = V2_VARIANTS[variant]
  kwargs.setdefault("dropout", spec.dropout)
  return build_efficientnet_v2(spec.blocks, width=spec.width, depth=spec.depth,
                               name=f"efficientnetv2-{variant}", **kwargs)


def native_resolution(variant: str) -> int:
  """The paper's evaluation image size for `variant`."""
  return V2_VARIANTS[variant].eval_size


# efficientnetv2_b0 ... efficientnetv2_xl: gin-registered builders (`@efficientnetv2_s`), one
# per V2_VARIANTS entry, in its order.
(efficientnetv2_b0, efficientnetv2_b1, efficientnetv2_b2, efficientnetv2_b3, efficientnetv2_s,
 efficientnetv2_m, efficientnetv2_l, efficientnetv2_xl) = (
     registered_builder(f"efficientnetv2_{v}", f"EfficientNetV2-{v.upper()} (see "
                        "`build_efficientnet_v2` for arguments).", efficientnet_v2, variant=v)
     for v in V2_VARIANTS)
