"""detlab's swish: tf.nn.silu's values in the plain two-op form grappler fuses into a conv."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from detlab.layers.activations import activation_fn, activation_layer, swish
from detlab.layers.normalization import stock_inference_form


def test_swish_equals_silu_and_its_gradient():
  x = tf.random.stateless_normal([3, 4, 5], seed=[1, 2]) * 4.0
  np.testing.assert_array_equal(swish(x), tf.nn.silu(x))  # the same product, bit for bit
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ours, stock = swish(x), tf.nn.silu(x)
  np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(stock, x), rtol=1e-6,
                             atol=1e-6)


def test_swish_traces_as_sigmoid_times_input_without_a_custom_gradient():
  def op_types(fn):
    graph = tf.function(fn).get_concrete_function(tf.TensorSpec([2, 3])).graph
    return {op.type for op in graph.get_operations()}
  assert {"Sigmoid", "Mul"} <= op_types(swish)
  assert "IdentityN" not in op_types(swish)
  assert "IdentityN" in op_types(tf.nn.silu)  # what stops the conv fusion
  with stock_inference_form():  # FLOP counting: silu's ops, as the reference counts them
    assert op_types(swish) == op_types(tf.nn.silu)


def test_activation_layer_maps_swish_and_keeps_others_and_round_trips():
  assert activation_fn("swish") is swish and activation_fn("silu") is swish
  assert activation_fn("relu") == "relu"
  layer = activation_layer("swish", name="act")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert clone.name == "act" and clone.activation is swish
