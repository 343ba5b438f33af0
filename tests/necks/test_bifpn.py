"""BiFPN node graph, fusion arithmetic and feature sizes as the EfficientDet paper (Tan, Pang
& Le, 2020, Fig. 2 and eq. 2) and google/automl's efficientdet_keras.py build them."""
import math

import numpy as np
import pytest
import tensorflow as tf

from detlab.necks.bifpn import BiFPN, FusionNode, bifpn_graph


def test_graph_for_levels_3_to_7_is_the_reference_graph():
  assert bifpn_graph(3, 7) == [
      (6, [3, 4]), (5, [2, 5]), (4, [1, 6]), (3, [0, 7]),
      (4, [1, 7, 8]), (5, [2, 6, 9]), (6, [3, 5, 10]), (7, [4, 11])]


def test_graph_for_levels_3_to_8_follows_the_same_rule():
  graph = bifpn_graph(3, 8)
  assert len(graph) == 10
  assert graph[0] == (7, [4, 5]) and graph[4] == (3, [0, 9])
  assert graph[-1] == (8, [5, 14])


def _features(size, channels=(40, 112, 320), levels=(3, 4, 5)):
  def side(level):
    s = size
    for _ in range(level):
      s = math.ceil(s / 2)
    return s
  return {str(l): tf.random.stateless_normal([2, side(l), side(l), c], seed=[l, 0])
          for l, c in zip(levels, channels)}


@pytest.mark.parametrize("size", [128, 100])
def test_output_levels_have_ceil_sizes_and_fpn_width(size):
  fpn = BiFPN(width=32, num_cells=2, min_level=3, max_level=7)
  out = fpn(_features(size))
  for level in range(3, 8):
    side = size
    for _ in range(level):
      side = math.ceil(side / 2)
    assert tuple(out[str(level)].shape) == (2, side, side, 32)


def _pre_conv_activation(node, inputs):
  """Runs a built node with conv and BN replaced by identity: swish(fused inputs)."""
  node(inputs)
  node.conv.call = lambda x: x
  node.bn.call = lambda x, training=None: x
  return node(inputs).numpy()


def test_fusion_modes_arithmetic():
  inputs = [tf.fill([1, 4, 4, 8], 1.0), tf.fill([1, 4, 4, 8], 3.0)]
  # Edge weights start at 1.0: fast = sum relu(w) x / (sum relu(w) + 1e-4), softmax = mean.
  for fusion, fused in (("fast", 4.0 / (2.0 + 1e-4)), ("softmax", 2.0), ("sum", 4.0)):
    got = _pre_conv_activation(FusionNode(8, [0, 0], fusion=fusion), inputs)
    np.testing.assert_allclose(got, fused / (1 + np.exp(-fused)), rtol=1e-5)


def test_fast_fusion_clamps_negative_weights_with_relu():
  node = FusionNode(8, [0, 0], fusion="fast")
  inputs = [tf.fill([1, 4, 4, 8], 1.0), tf.fill([1, 4, 4, 8], 3.0)]
  node(inputs)
  node.edge_weights.assign([2.0, -1.0])
  fused = 2.0 * 1.0 / (2.0 + 1e-4)
  got = _pre_conv_activation(node, inputs)
  np.testing.assert_allclose(got, fused / (1 + np.exp(-fused)), rtol=1e-5)


def test_edge_weights_start_at_one_per_input():
  node = FusionNode(8, [0, 0, 0], "fast")
  node([tf.zeros([1, 4, 4, 8])] * 3)
  np.testing.assert_array_equal(node.edge_weights.numpy(), [1.0, 1.0, 1.0])


def test_sum_fusion_has_no_edge_weights():
  node = FusionNode(8, [0, 0], "sum")
  node([tf.zeros([1, 4, 4, 8])] * 2)
  assert not [w for w in node.weights if "edge_weights" in w.name]


def test_resampling_to_coarser_level_is_max_pool():
  node = FusionNode(4, [0, 1], "sum")
  fine = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1]) * tf.ones([1, 1, 1, 4])
  got = _pre_conv_activation(node, [tf.zeros([1, 2, 2, 4]), fine])
  pooled = tf.nn.max_pool2d(fine, 3, 2, "SAME")
  np.testing.assert_allclose(got, tf.nn.swish(pooled).numpy(), rtol=1e-6)


def test_resampling_to_finer_level_is_nearest_neighbour_cropped():
  node = FusionNode(4, [0, -1], "sum")
  coarse = tf.reshape(tf.range(4, dtype=tf.float32), [1, 2, 2, 1]) * tf.ones([1, 1, 1, 4])
  got = _pre_conv_activation(node, [tf.zeros([1, 3, 3, 4]), coarse])
  upsampled = np.repeat(np.repeat(coarse.numpy(), 2, 1), 2, 2)[:, :3, :3]
  np.testing.assert_allclose(got, tf.nn.swish(upsampled).numpy(), rtol=1e-6)


def test_relu6_activation_clips_the_fused_sum_at_six():
  """EfficientDet-Lite: relu6 instead of swish after the fusion (automl act_type 'relu6')."""
  for values, expected in (((1.0, 3.0), 4.0), ((5.0, 3.0), 6.0), ((-5.0, 3.0), 0.0)):
    inputs = [tf.fill([1, 4, 4, 8], v) for v in values]
    node = FusionNode(8, [0, 0], fusion="sum", activation="relu6")
    np.testing.assert_allclose(_pre_conv_activation(node, inputs), expected)
