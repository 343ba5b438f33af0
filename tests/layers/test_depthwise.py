"""detlab's DepthwiseConv2D: keras' layer whose training pass takes TensorFlow's own kernel for
the filter gradient of kernels larger than 3x3 (oneDNN's is its generic grouped conv there),
and in bfloat16 on a CPU without AMX computes the slow depthwise gradients in float32."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.layers import depthwise
from detlab.layers.depthwise import DepthwiseConv2D
from detlab.layers.normalization import onednn_enabled
from layer_gradients import values_and_gradients  # pylint: disable=import-error

needs_onednn = pytest.mark.skipif(not onednn_enabled(),
                                  reason="the choice is made for oneDNN CPUs only")


def _pair(kernel, stride, padding, multiplier, shape, dtype="float32"):
  """detlab's layer and keras' with the same weights, each in a functional model."""
  ours = DepthwiseConv2D(kernel, strides=stride, padding=padding, depth_multiplier=multiplier,
                         name="ours", dtype=dtype)
  stock = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding,
                                       depth_multiplier=multiplier, name="stock", dtype=dtype)
  inputs = keras.Input(shape[1:], batch_size=shape[0])
  models = keras.Model(inputs, ours(inputs)), keras.Model(inputs, stock(inputs))
  weights = [tf.random.stateless_normal(w.shape, seed=[i, 7]).numpy()
             for i, w in enumerate(ours.weights)]
  ours.set_weights(weights)
  stock.set_weights(weights)
  return models


@pytest.mark.parametrize("kernel,stride,padding,multiplier,shape", [
    (5, 2, "same", 1, (2, 17, 16, 8)),   # odd height: SAME pads 2 / 2 there, 1 / 2 across
    (5, 1, "same", 2, (2, 16, 16, 8)),
    (5, 1, "valid", 1, (2, 13, 12, 8)),
    (5, 2, "valid", 2, (2, 15, 16, 8)),
    (7, 2, "same", 1, (1, 18, 18, 4)),
    (3, 2, "same", 1, (2, 16, 16, 8)),   # 3x3: keras' graph, same values
])
def test_training_values_and_gradients_equal_keras(kernel, stride, padding, multiplier, shape):
  ours, stock = _pair(kernel, stride, padding, multiplier, shape)
  x = tf.random.stateless_normal(shape, seed=[3, 4])
  got, want = values_and_gradients(ours, x), values_and_gradients(stock, x)
  names = ["output", "input gradient", "kernel gradient", "bias gradient"]
  for name, a, b in zip(names, got, want):
    scale = float(np.max(np.abs(b)))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale, err_msg=name)
  np.testing.assert_array_equal(ours(x, training=False), stock(x, training=False))


def _gradient_ops(model, shape, dtype=tf.float32):
  graph = values_and_gradients.get_concrete_function(model, tf.TensorSpec(shape, dtype)).graph
  return [op for op in graph.get_operations() if op.type.startswith("DepthwiseConv2dNativeBack")]


def _filter_gradient_paddings(model, shape):
  return sorted(op.get_attr("padding").decode() for op in _gradient_ops(model, shape)
                if op.type == "DepthwiseConv2dNativeBackpropFilter")


@needs_onednn
def test_large_kernels_take_the_explicit_padding_filter_gradient_3x3_keep_onednns():
  shape = (2, 16, 16, 8)
  assert _filter_gradient_paddings(_pair(5, 2, "same", 1, shape)[0], shape) == ["EXPLICIT"]
  assert _filter_gradient_paddings(_pair(3, 2, "same", 1, shape)[0], shape) == ["SAME"]
  assert _filter_gradient_paddings(_pair(5, 2, "same", 1, shape)[1], shape) == ["SAME"]
  # a dynamic spatial size cannot be written out as explicit padding: keras' graph
  dynamic = _pair(5, 1, "same", 1, shape)[0]
  assert _filter_gradient_paddings(dynamic, (2, None, None, 8)) == ["SAME"]


@needs_onednn
@pytest.mark.skipif(not depthwise.bfloat16_gradients_in_float32(), reason="a CPU with AMX")
@pytest.mark.parametrize("kernel,stride,float32_ops", [
    (5, 2, ["DepthwiseConv2dNativeBackpropFilter", "DepthwiseConv2dNativeBackpropInput"]),
    (5, 1, ["DepthwiseConv2dNativeBackpropFilter"]),
    (3, 2, ["DepthwiseConv2dNativeBackpropInput"]),
])
def test_bfloat16_takes_float32_gradients_near_the_float32_ones(kernel, stride, float32_ops):
  shape = (2, 16, 16, 8)
  ours, _ = _pair(kernel, stride, "same", 1, shape, dtype="mixed_bfloat16")
  reference, _ = _pair(kernel, stride, "same", 1, shape)
  reference.set_weights(ours.get_weights())
  x = tf.random.stateless_normal(shape, seed=[3, 4])
  got = values_and_gradients(ours, tf.cast(x, tf.bfloat16))
  want = values_and_gradients(reference, x)
  assert got[1].dtype == tf.bfloat16 and got[2].dtype == tf.float32  # the variable's dtype
  for name, a, b in zip(["output", "input gradient", "kernel gradient"], got, want):
    scale = float(np.max(np.abs(b)))  # bfloat16 inputs and forward: ~3 significant digits
    np.testing.assert_allclose(tf.cast(a, tf.float32), b, rtol=0, atol=0.03 * scale,
                               err_msg=name)
  ops = _gradient_ops(ours, shape, tf.bfloat16)
  assert sorted(op.type for op in ops if op.get_attr("T") == tf.float32) == float32_ops
  assert len(ops) == 2


@pytest.mark.parametrize("padding,size,expected", [
    ("SAME", 16, [0, 0, 1, 2, 1, 2, 0, 0]),   # stride 2, kernel 5: 3 rows of padding
    ("SAME", 17, [0, 0, 2, 2, 2, 2, 0, 0]),
    ("VALID", 16, [0] * 8),
])
def test_explicit_paddings_are_tfs_same_and_valid(padding, size, expected):
  y = tf.nn.depthwise_conv2d(tf.zeros([1, size, size, 1]), tf.zeros([5, 5, 1, 1]),
                             [1, 2, 2, 1], padding)
  assert depthwise.explicit_paddings((1, size, size, 1), y.shape, (5, 5), 2,
                                     padding) == expected


def test_layer_round_trips_and_is_a_keras_depthwise_conv():
  layer = DepthwiseConv2D(5, strides=2, padding="same", name="block3a_dwconv")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert isinstance(clone, DepthwiseConv2D) and isinstance(clone, keras.layers.DepthwiseConv2D)
  assert clone.name == "block3a_dwconv" and clone.kernel_size == (5, 5)
