"""Which google/automl EfficientDet checkpoint name holds each variable of a detlab EfficientDet.

Naming facts of the reference (google/automl efficientdet/tf2/efficientdet_keras.py and
backbone/efficientnet_model.py), which every Dk and EfficientDet-Lite shares:
- backbone `efficientnet-bN/` (Lite: `efficientnet-liteN/`, the same names without SE):
  `stem/conv2d`, `stem/tpu_batch_normalization`; MBConv blocks
  numbered globally `blocks_0 ... blocks_{n-1}`, inside each the keras auto-names in creation
  order: with an expansion conv `conv2d` (expand), `tpu_batch_normalization` (its BN),
  `depthwise_conv2d`, `tpu_batch_normalization_1`, `se/conv2d` (reduce), `se/conv2d_1`
  (expand), `conv2d_1` (project), `tpu_batch_normalization_2`; without one (expand ratio 1)
  `depthwise_conv2d`, `tpu_batch_normalization`, SE, `conv2d` (project),
  `tpu_batch_normalization_1`.
- extra levels above the backbone: `resample_p{level}/conv2d`, `/bn` (only where channels
  differ: P6 from the backbone's last level; P7 (and D7x's P8) have no variables).
- BiFPN `fpn_cells/cell_{c}/fnode{n}/`: one scalar `WSM`, `WSM_1`, ... per input edge (not in
  `sum` fusion), `resample_{i}_{input node id}_{node id}/conv2d` and `/bn` for an input whose
  width differs, `op_after_combine{node id}/conv` (separable, with bias) and `/bn`. Node ids
  count on from the inputs: fnode n of a P3-P7 net is node 5 + n, of D7x's P3-P8 node 6 + n.
- heads: `class_net/class-{i}` (separable, shared over levels), `class_net/class-{i}-bn-{level}`,
  `class_net/class-predict`; `box_net/box-...` alike.
- every variable has an `<name>/ExponentialMovingAverage` shadow in the published bundles.
"""
import dataclasses
import re

import tensorflow as tf

EMA_SUFFIX = "/ExponentialMovingAverage"
_BLOCK_LAYER = re.compile(r"^block(\d+)([a-z]+)_(.+)$")
_BACKBONE_NAME = re.compile(r"efficientnet-(?:b|lite)\d")


@dataclasses.dataclass
class Mapped:
  """One detlab variable and the reference name(s) that hold it (several WSM scalars stack
  into one edge-weight vector)."""
  part: str                  # backbone / fpn / class_net / box_net
  variable: tf.Variable
  names: list[str]


def _leaf(variable: tf.Variable) -> str:
  """`kernel`, `bias`, `gamma`, `moving_mean`, `depthwise_kernel`, ... (keras' weight names,
  which the reference's keras layers share)."""
  return variable.name.split(":")[0].split("/")[-1]


def _layer_weights(part: str, layer, prefix: str) -> list[Mapped]:
  return [Mapped(part, v, [f"{prefix}/{_leaf(v)}"]) for v in layer.weights]


class UnsupportedModelError(ValueError):
  """The detlab model has no automl counterpart (says which part and what would fit)."""


def backbone_prefix(backbone) -> str:
  match = _BACKBONE_NAME.search(backbone.name)
  if match is None:
    raise UnsupportedModelError(
        f"google/automl EfficientDet checkpoints hold EfficientNet-B0..B7 or Lite0..Lite4 "
        f"backbones; this detector's backbone is {backbone.name!r}. Use an "
        "efficientdet_d0..d7x or efficientdet_lite0..lite4 gin file.")
  return match.group(0)


def _backbone(backbone) -> list[Mapped]:
  prefix = backbone_prefix(backbone)
  blocks: dict[str, dict] = {}  # block key ('2b') -> {role: layer}
  mapped = []
  for layer in backbone.layers:
    if not layer.weights:
      continue
    if layer.name in ("stem_conv", "stem_bn"):
      sub = "conv2d" if layer.name == "stem_conv" else "tpu_batch_normalization"
      mapped += _layer_weights("backbone", layer, f"{prefix}/stem/{sub}")
      continue
    match = _BLOCK_LAYER.match(layer.name)
    if match is None:
      raise UnsupportedModelError(f"Backbone layer {layer.name!r} of {backbone.name} has no "
                                  "automl counterpart (only EfficientNet V1 MBConv blocks do).")
    blocks.setdefault(match.group(1) + match.group(2), {})[match.group(3)] = layer
  def order(key: str):  # stage number, then a..z, aa, ab, ... (keras apps' block letters)
    stage, letters = re.match(r"(\d+)([a-z]+)", key).groups()
    return int(stage), len(letters), letters

  for index, key in enumerate(sorted(blocks, key=order)):
    roles = blocks[key]
    expands = "expand_conv" in roles
    names = {"dwconv": "depthwise_conv2d", "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1"}
    if expands:
      names.update(expand_conv="conv2d", expand_bn="tpu_batch_normalization",
                   bn="tpu_batch_normalization_1", project_conv="conv2d_1",
                   project_bn="tpu_batch_normalization_2")
    else:
      names.update(bn="tpu_batch_normalization", project_conv="conv2d",
                   project_bn="tpu_batch_normalization_1")
    for role, layer in roles.items():
      if role not in names:
        raise UnsupportedModelError(f"Backbone layer {layer.name!r} has no automl counterpart.")
      mapped += _layer_weights("backbone", layer, f"{prefix}/blocks_{index}/{names[role]}")
  return mapped


def _resample(layer, prefix: str) -> list[Mapped]:
  if layer.conv is None:
    return []
  return (_layer_weights("fpn", layer.conv, f"{prefix}/conv2d") +
          _layer_weights("fpn", layer.bn, f"{prefix}/bn"))


def _bifpn(fpn) -> list[Mapped]:
  mapped = []
  for level in range(fpn.backbone_max + 1, fpn.max_level + 1):
    mapped += _resample(fpn.extra_levels[str(level)], f"resample_p{level}")
  num_inputs = fpn.max_level - fpn.min_level + 1
  for c, nodes in enumerate(fpn.cells):
    for n, ((_, inputs), node) in enumerate(zip(fpn.graph, nodes)):
      if node is None:  # pruned (BiFPN output_levels): the reference has all nodes
        continue
      node_id = num_inputs + n
      prefix = f"fpn_cells/cell_{c}/fnode{n}"
      if node.fusion != "sum":
        mapped.append(Mapped("fpn", node.edge_weights, [
            f"{prefix}/WSM" + (f"_{i}" if i else "") for i in range(len(inputs))]))
      for i, (resampler, input_id) in enumerate(zip(node.resamplers, inputs)):
        mapped += _resample(resampler, f"{prefix}/resample_{i}_{input_id}_{node_id}")
      mapped += _layer_weights("fpn", node.conv, f"{prefix}/op_after_combine{node_id}/conv")
      mapped += _layer_weights("fpn", node.bn, f"{prefix}/op_after_combine{node_id}/bn")
  return mapped


def _head(head, kind: str) -> list[Mapped]:
  part = f"{kind}_net"
  mapped = []
  for i, (conv, bns) in enumerate(zip(head.convs, head.bns)):
    mapped += _layer_weights(part, conv, f"{part}/{kind}-{i}")
    for level, bn in zip(range(head.min_level, head.max_level + 1), bns):
      mapped += _layer_weights(part, bn, f"{part}/{kind}-{i}-bn-{level}")
  return mapped + _layer_weights(part, head.predictor, f"{part}/{kind}-predict")


def automl_names(model) -> list[Mapped]:
  """Every variable of a built detlab EfficientDet with its automl checkpoint name(s).

  Raises UnsupportedModelError for a backbone other than EfficientNet V1, or when a variable
  of the model is left without a name (a layer this mapping does not know).
  """
  mapped = (_backbone(model.backbone) + _bifpn(model.fpn) + _head(model.class_net, "class")
            + _head(model.box_net, "box"))
  covered = {v.variable.ref() for v in mapped}
  missing = [v.name for v in model.variables if v.ref() not in covered]
  if missing:
    raise UnsupportedModelError("No automl name for these variables: " + ", ".join(missing))
  return mapped
