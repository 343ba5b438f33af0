"""detlab's DepthwiseConv2D: keras' layer whose training pass takes TensorFlow's own kernel for
the filter gradient of kernels larger than 3x3 (oneDNN's is its generic grouped conv there)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.layers import depthwise
from detlab.layers.depthwise import DepthwiseConv2D
from detlab.layers.normalization import onednn_enabled


def _pair(kernel, stride, padding, multiplier, shape):
  """detlab's layer and keras' with the same weights, each in a functional model."""
  ours = DepthwiseConv2D(kernel, strides=stride, padding=padding, depth_multiplier=multiplier,
                         name="ours")
  stock = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding,
                                       depth_multiplier=multiplier, name="stock")
  inputs = keras.Input(shape[1:], batch_size=shape[0])
  models = keras.Model(inputs, ours(inputs)), keras.Model(inputs, stock(inputs))
  weights = [tf.random.stateless_normal(w.shape, seed=[i, 7]).numpy()
             for i, w in enumerate(ours.weights)]
  ours.set_weights(weights)
  stock.set_weights(weights)
  return models


@tf.function
def _values_and_gradients(model, x):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = model(x, training=True)
    loss = tf.reduce_sum(y * tf.sin(y))  # a non-uniform upstream gradient
  return [y] + tape.gradient(loss, [x] + model.trainable_variables)


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
  got, want = _values_and_gradients(ours, x), _values_and_gradients(stock, x)
  names = ["output", "input gradient", "kernel gradient", "bias gradient"]
  for name, a, b in zip(names, got, want):
    scale = float(np.max(np.abs(b)))
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale, err_msg=name)
  np.testing.assert_array_equal(ours(x, training=False), stock(x, training=False))


def _filter_gradient_paddings(model, shape):
  graph = _values_and_gradients.get_concrete_function(
      model, tf.TensorSpec(shape, tf.float32)).graph
  return sorted(op.get_attr("padding").decode() for op in graph.get_operations()
                if op.type == "DepthwiseConv2dNativeBackpropFilter")


@pytest.mark.skipif(not onednn_enabled(), reason="the choice is made for oneDNN CPUs only")
def test_large_kernels_take_the_explicit_padding_filter_gradient_3x3_keep_onednns():
  shape = (2, 16, 16, 8)
  assert _filter_gradient_paddings(_pair(5, 2, "same", 1, shape)[0], shape) == ["EXPLICIT"]
  assert _filter_gradient_paddings(_pair(3, 2, "same", 1, shape)[0], shape) == ["SAME"]
  assert _filter_gradient_paddings(_pair(5, 2, "same", 1, shape)[1], shape) == ["SAME"]
  # a dynamic spatial size cannot be written out as explicit padding: keras' graph
  dynamic = _pair(5, 1, "same", 1, shape)[0]
  assert _filter_gradient_paddings(dynamic, (2, None, None, 8)) == ["SAME"]


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
