"""SqueezeWithInput: an SE squeeze whose training gradient adds the mean's share into the
excitation's in one pass, and whose inference mean is oneDNN's pooling; the values and
gradients are the stock SE's."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.layers import normalization
from detlab.layers.squeeze_excite import SqueezeWithInput
from layer_gradients import values_and_gradients  # pylint: disable=import-error


def _se_models(shape):
  """The same SE block twice, with keras' GlobalAveragePooling2D and with SqueezeWithInput."""
  channels = shape[-1]
  inputs = keras.Input(shape[1:], batch_size=shape[0])
  gate_layers = [keras.layers.Dense(2, activation="swish"),
                 keras.layers.Dense(channels, activation="sigmoid")]

  def gate(pooled):
    for layer in gate_layers:
      pooled = layer(pooled)
    return keras.layers.Reshape((1, 1, channels))(pooled)

  stock = keras.Model(inputs, keras.layers.multiply(
      [inputs, gate(keras.layers.GlobalAveragePooling2D()(inputs))]))
  x, pooled = SqueezeWithInput(name="se_squeeze")(inputs)
  ours = keras.Model(inputs, keras.layers.multiply([x, gate(pooled)]))
  for w in ours.weights:  # shared gate layers: one set of weights, seeded
    w.assign(tf.random.stateless_normal(w.shape, seed=[len(w.name), 3]))
  return ours, stock


@pytest.mark.parametrize("shape", [(2, 8, 6, 4), (3, 5, 5, 16)])
def test_values_and_gradients_equal_the_stock_se_block(shape):
  ours, stock = _se_models(shape)
  x = tf.random.stateless_normal(shape, seed=[5, 6])
  got, want = values_and_gradients(ours, x), values_and_gradients(stock, x)
  assert len(got) == len(want) == 6
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(b))))
  np.testing.assert_allclose(ours(x, training=False), stock(x, training=False), rtol=1e-5,
                             atol=1e-6)


def _op_types(model, shape):
  graph = values_and_gradients.get_concrete_function(
      model, tf.TensorSpec(shape, tf.float32)).graph
  return [op.type for op in graph.get_operations()]


def test_training_gradient_has_no_full_size_tile_divide_or_addn():
  """The behaviour it exists for: the stock block's gradient of x is Tile + RealDiv + AddN."""
  shape = (2, 8, 8, 4)
  ours, stock = _se_models(shape)
  assert {"Tile", "AddN"} <= set(_op_types(stock, shape))
  assert not {"Tile", "AddN"} & set(_op_types(ours, shape))
  # a dynamic spatial size: the stock gradient (H * W is not a constant)
  assert "AddN" in _op_types(ours, (2, None, None, 4))


@pytest.mark.parametrize("onednn", [True, False])
def test_inference_mean_is_a_full_window_average_pool_with_onednn(monkeypatch, onednn):
  monkeypatch.setattr(normalization, "onednn_enabled", lambda: onednn)
  layer = SqueezeWithInput()
  x = tf.random.stateless_normal((2, 7, 5, 3), seed=[1, 2])
  function = tf.function(lambda t: layer(t, training=False)[1])
  ops = {op.type for op in function.get_concrete_function(x).graph.get_operations()}
  assert ("AvgPool" in ops) is onednn and ("Mean" in ops) is not onednn
  np.testing.assert_allclose(function(x), tf.reduce_mean(x, axis=[1, 2]), rtol=1e-6, atol=1e-7)
  dynamic = function.get_concrete_function(tf.TensorSpec((2, None, None, 3))).graph
  assert "Mean" in {op.type for op in dynamic.get_operations()}
  # FLOP counting (the reference's Mean) and exports (a Mean every runtime has)
  for context in (normalization.stock_inference_form, normalization.portable_forms):
    with context():
      graph = tf.function(lambda t: layer(t, training=False)[1]).get_concrete_function(x).graph
      assert "Mean" in {op.type for op in graph.get_operations()}


def test_layer_round_trips():
  layer = SqueezeWithInput(name="block1a_se_squeeze")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert isinstance(clone, SqueezeWithInput) and clone.name == "block1a_se_squeeze"
