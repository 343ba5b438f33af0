"""BiFPN: weighted bi-directional feature pyramid network (Tan et al., EfficientDet, 2020).

Node graph for levels min..max (inputs P_min..P_max are nodes 0..L-1):
  top-down   for level max-1 .. min:  fuse(P_level, previous top-down node or P_max)
  bottom-up  for level min+1 .. max:  fuse(P_level, top-down node at level (not at max),
                                           previous output)
For levels 3-7 this is the reference graph: id5 <- [3, 4], id6 <- [2, 5], id7 <- [1, 6],
id8 <- [0, 7], id9 <- [1, 7, 8], id10 <- [2, 6, 9], id11 <- [3, 5, 10], id12 <- [4, 11].
Each node: resample inputs to its level (1x1 conv + BN when channels differ, max-pool 3x3/2
SAME down, nearest up), fuse, activation (swish; EfficientDet-Lite: relu6), separable 3x3 conv
(bias), BN.
"""
import gin
import tensorflow as tf
import tf_keras as keras

from detlab.layers import batch_norm
from detlab.layers.activations import activation_fn, apply_activation

FUSION_MODES = ("fast", "softmax", "sum")


def bifpn_graph(min_level: int, max_level: int) -> list[tuple[int, list[int]]]:
  """[(level, [input node ids])] for the fusion nodes, ids continuing after the inputs."""
  num_levels = max_level - min_level + 1
  node_of_input = {level: level - min_level for level in range(min_level, max_level + 1)}
  nodes, next_id = [], num_levels
  top_down = {max_level: node_of_input[max_level]}
  for level in range(max_level - 1, min_level - 1, -1):
    nodes.append((level, [node_of_input[level], top_down[level + 1]]))
    top_down[level] = next_id
    next_id += 1
  previous = top_down[min_level]
  for level in range(min_level + 1, max_level + 1):
    inputs = [node_of_input[level]]
    if level < max_level:
      inputs.append(top_down[level])
    inputs.append(previous)
    nodes.append((level, inputs))
    previous = next_id
    next_id += 1
  return nodes


# The name of a BiFPN fusion's adds (ONNX INT8 export keeps them float, as it kept AddN).
FUSION_ADD_NAME = "fusion_add"


def _chained_sum(xs):
  total = xs[0]
  for x in xs[1:]:
    total = tf.add(total, x, name=FUSION_ADD_NAME)
  return total


class ResampleToLevel(keras.layers.Layer):
  """Matches channels (1x1 conv + BN if they differ) and spatial size (max-pool / nearest)."""

  def __init__(self, width: int, level_ratio: int, sync_bn: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.width, self.level_ratio, self.sync_bn = width, level_ratio, sync_bn
    self.conv = self.bn = None

  def build(self, input_shape):
    if input_shape[-1] != self.width:
      self.conv = keras.layers.Conv2D(self.width, 1, padding="same", name="conv")
      self.bn = batch_norm("bn", synchronized=self.sync_bn)
    super().build(input_shape)

  def call(self, x, target_size, training=None):
    if self.conv is not None:
      x = self.bn(self.conv(x), training=training)
    if self.level_ratio > 0:  # to a coarser level
      for _ in range(self.level_ratio):
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    elif self.level_ratio < 0:  # to a finer level: nearest neighbour, cropped to ceil sizes
      # factor² copies of x side by side in channels, then depth_to_space: the same values
      # as repeating rows and columns, in two ops every converter maps to its own kernels
      # (LiteRT's XNNPACK delegate has no TILE, which the repeat form lowers to, so each
      # upsampling cut the INT8 graph into separately delegated pieces).
      factor = 2 ** -self.level_ratio
      x = tf.nn.depth_to_space(tf.concat([x] * (factor * factor), axis=-1), factor)
      x = x[:, :target_size[0], :target_size[1], :]
    return x


class FusionNode(keras.layers.Layer):
  """One BiFPN node: resample inputs, weighted fusion, activation, separable conv, BN.

  `activation`: a tf_keras activation name or callable ('swish' is detlab's fusable swish)."""

  def __init__(self, width: int, input_level_ratios: list[int], fusion: str = "fast",
               sync_bn: bool = False, activation="swish", **kwargs):
    super().__init__(**kwargs)
    if fusion not in FUSION_MODES:
      raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}.")
    self.fusion = fusion
    self.activation = activation
    self._activation = keras.activations.get(activation_fn(activation))
    self.resamplers = [ResampleToLevel(width, r, sync_bn, name=f"resample_{i}")
                       for i, r in enumerate(input_level_ratios)]
    self.conv = keras.layers.SeparableConv2D(width, 3, padding="same", use_bias=True,
                                             name="after_combine_conv")
    self.bn = batch_norm("after_combine_bn", synchronized=sync_bn)

  def build(self, input_shape):
    if self.fusion != "sum":
      # One scalar per input edge, initialised to 1.0.
      self.edge_weights = self.add_weight(
          "edge_weights", shape=[len(self.resamplers)],
          initializer=keras.initializers.Ones(), trainable=True)
    super().build(input_shape)

  def call(self, inputs, training=None):
    target = inputs[0]  # the same-level input fixes the output size
    target_size = tf.shape(target)[1:3]
    xs = [r(x, target_size, training=training) for r, x in zip(self.resamplers, inputs)]
    # Sums are chained binary adds, ((x0 + x1) + x2), the order AddN's CPU kernel adds in:
    # LiteRT's converter leaves ADD_N in float (dequantize, add, quantize around every BiFPN
    # node of an INT8 model) and its XNNPACK delegate has no ADD_N; ADD stays int8.
    if self.fusion == "sum":
      fused = _chained_sum(xs)
    else:
      weights = tf.cast(self.edge_weights, xs[0].dtype)
      if self.fusion == "fast":
        weights = tf.nn.relu(weights)
        weights = weights / (tf.reduce_sum(weights) + 1e-4)
      else:
        weights = tf.nn.softmax(weights)
      fused = _chained_sum([weights[i] * x for i, x in enumerate(xs)])
    x = apply_activation(self._activation, fused, training)
    return self.bn(self.conv(x), training=training)


@gin.register(module="detlab.necks")
class BiFPN(keras.layers.Layer):
  """Stacked BiFPN cells over levels min..max; extra levels beyond the backbone come from
  P_{l+1} = maxpool(BN(conv1x1(P_l))) (conv only when channels differ).

  Input: {str(level): tensor} from the backbone (it must provide min_level..backbone max).
  Output: {str(level): [B, ceil(S/2^l), ., width]} for min_level..max_level, or only for
  `output_levels` if given: then the last cell builds only the nodes those outputs depend on
  (a head on P2 alone never reads the last cell's bottom-up nodes, which would otherwise be
  parameters without gradients). Node names stay those of the full graph.
  `activation`: every fusion node's (default swish; EfficientDet-Lite 'relu6').
  """

  def __init__(self, width: int = 64, num_cells: int = 3, min_level: int = 3,
               max_level: int = 7, fusion: str = "fast", sync_bn: bool = False,
               output_levels=None, activation="swish", **kwargs):
    super().__init__(**kwargs)
    self.width, self.num_cells, self.fusion, self.sync_bn = width, num_cells, fusion, sync_bn
    self.activation = activation
    self.min_level, self.max_level = min_level, max_level
    self.graph = bifpn_graph(min_level, max_level)
    levels = range(min_level, max_level + 1)
    self.output_levels = tuple(levels if output_levels is None else sorted(output_levels))
    if not set(self.output_levels) <= set(levels):
      raise ValueError(f"BiFPN output_levels {self.output_levels} must lie in "
                       f"{min_level}..{max_level}.")
    self.extra_levels = {}
    self.cells = []

  def build(self, input_shape):
    backbone_levels = [int(k) for k in input_shape if self.min_level <= int(k) <= self.max_level]
    self.backbone_max = max(backbone_levels)
    for level in range(self.backbone_max + 1, self.max_level + 1):
      self.extra_levels[str(level)] = ResampleToLevel(self.width, 1, self.sync_bn,
                                                 name=f"resample_p{level}")
    num_inputs = self.max_level - self.min_level + 1
    # A level's output is its last node in the graph (bottom-up, or top-down at min_level).
    self._output_node = {self._node_level(i, num_inputs): i
                         for i in range(num_inputs, num_inputs + len(self.graph))}
    needed = {self._output_node[l] for l in self.output_levels}
    for i in range(num_inputs + len(self.graph) - 1, num_inputs - 1, -1):
      if i in needed:
        needed.update(self.graph[i - num_inputs][1])
    for c in range(self.num_cells):
      last = c == self.num_cells - 1
      nodes = []
      for n, (level, inputs) in enumerate(self.graph):
        if last and n + num_inputs not in needed:
          nodes.append(None)
          continue
        ratios = [level - self._node_level(i, num_inputs) for i in inputs]
        nodes.append(FusionNode(self.width, ratios, self.fusion, self.sync_bn,
                                activation=self.activation, name=f"cell{c}_fnode{n}"))
      self.cells.append(nodes)
    super().build(input_shape)

  def _node_level(self, node_id: int, num_inputs: int) -> int:
    if node_id < num_inputs:
      return self.min_level + node_id
    return self.graph[node_id - num_inputs][0]

  def call(self, features: dict, training=None) -> dict:
    feats = [features[str(l)] for l in range(self.min_level, self.backbone_max + 1)]
    for level in range(self.backbone_max + 1, self.max_level + 1):
      previous = feats[-1]
      size = tf.shape(previous)[1:3]
      feats.append(self.extra_levels[str(level)](previous, (size + 1) // 2, training=training))
    num_inputs = len(feats)
    for nodes in self.cells:
      all_nodes = list(feats)
      for (level, inputs), node in zip(self.graph, nodes):
        all_nodes.append(None if node is None else  # pruned (last cell, output not asked)
                         node([all_nodes[i] for i in inputs], training=training))
      feats = [all_nodes[self._output_node[l]]
               for l in range(self.min_level, self.max_level + 1)]
    return {str(l): feats[l - self.min_level] for l in self.output_levels}
