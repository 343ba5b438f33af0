"""detlab's swish: tf.nn.silu's values in the plain two-op form grappler fuses into a conv."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from detlab.layers import activations
from detlab.layers.activations import activation_fn, activation_layer, swish, swish_for_training
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
  assert isinstance(clone, activations.Activation)


def _ops_of_training_step(fn, shape):
  """Op types of the traced forward + backward of fn at `shape` (the outer graph, where a
  custom gradient's IdentityN sits), and whether any function it calls is compiled with XLA."""
  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = fn(x)
    return tape.gradient(y, x)
  graph = tf.function(step).get_concrete_function(tf.TensorSpec(shape)).graph
  ops = list(graph.get_operations())
  compiled = False
  for function in graph._functions.values():  # pylint: disable=protected-access
    compiled |= function.cached_definition.attr["_XlaMustCompile"].b
  return {op.type for op in ops}, compiled


def test_swish_for_training_compiles_its_gradient_for_large_tensors_only():
  """Above XLA_SWISH_MIN_ELEMENTS the gradient is one compiled pass with autodiff's values
  (against float64); below it, and in a FLOP count, it is plain swish."""
  big = [4, 64, 64, 64]
  assert np.prod(big) >= activations.XLA_SWISH_MIN_ELEMENTS
  x = tf.random.stateless_normal(big, seed=[3, 4]) * 4.0
  upstream = tf.random.stateless_normal(big, seed=[5, 6])

  @tf.function
  def value_and_gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = swish_for_training(x)
    return y, tape.gradient(y, x, output_gradients=upstream)

  y, gradient = value_and_gradient(x)
  x64 = tf.cast(x, tf.float64)
  sigmoid = tf.sigmoid(x64)
  exact = tf.cast(upstream, tf.float64) * sigmoid * (1 + x64 * (1 - sigmoid))
  np.testing.assert_allclose(y, swish(x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(gradient, exact, rtol=1e-5, atol=1e-5)
  _, compiled = _ops_of_training_step(swish_for_training, big)
  assert compiled
  ops, compiled = _ops_of_training_step(swish_for_training, [2, 8, 8, 16])
  assert not compiled and "IdentityN" not in ops
  with stock_inference_form():
    assert not _ops_of_training_step(swish_for_training, big)[1]


def test_activation_layer_uses_the_compiled_gradient_in_training_passes_only():
  """training=True: the compiled gradient; training=False/None: the fusable plain form (no
  custom gradient's IdentityN in front of the conv fusion)."""
  layer = activation_layer("swish")
  big = [4, 64, 64, 64]
  assert _ops_of_training_step(lambda x: layer(x, training=True), big)[1]
  for training in (False, None):
    ops, compiled = _ops_of_training_step(lambda x, t=training: layer(x, training=t), big)
    assert not compiled and "IdentityN" not in ops
