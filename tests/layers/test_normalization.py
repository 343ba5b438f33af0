"""detlab's BatchNormalization: its inference forms (folded into a depthwise conv, as a grouped
Conv2D at depth multiplier 1; a squeeze-excite gate and BN folded into the 1x1 projection as
one batched matmul; a conv's bias moved into the mean; the batch-1 multiply-add form) equal
tf_keras' fused op, and are taken only where they pay (oneDNN on, inference in a traced
function, not while counting FLOPs; the grouped Conv2D not in `portable_forms()`, the traces
of exports; the multiply-add form only at a static batch of 1 on a CPU without AVX-512)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.layers import normalization
from detlab.layers.normalization import BatchNormalization, batch_norm, stock_inference_form


@pytest.fixture(name="onednn")
def _onednn(monkeypatch):
  """Pretend oneDNN is on, on a CPU without AVX-512, whatever this process runs with."""
  monkeypatch.setattr(normalization, "onednn_enabled", lambda: True)
  monkeypatch.setattr(normalization, "cpu_has_avx512", lambda: False)


def _op_types(layer, shape, training=False):
  function = tf.function(lambda t: layer(t, training=training))
  return {op.type for op in function.get_concrete_function(tf.TensorSpec(shape)).graph
          .get_operations()}


def _fused(ops):
  return any(t.startswith("FusedBatchNorm") for t in ops)


def _pair(**kwargs):
  """detlab's layer and the stock tf_keras layer with the same (non-trivial) statistics."""
  ours, stock = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
  ours.build([None, 5, 5, 6])
  stock.build([None, 5, 5, 6])
  rng = np.random.default_rng(0)
  values = [rng.normal(size=w.shape).astype("float32") for w in stock.weights]
  values = [np.abs(v) + 0.1 if "variance" in w.name else v for v, w in zip(values, stock.weights)]
  stock.set_weights(values)
  ours.set_weights(values)
  return ours, stock


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False)])
def test_inference_equals_stock_layer(onednn, scale, center):
  del onednn
  ours, stock = _pair(scale=scale, center=center, epsilon=1e-3)
  x = tf.random.stateless_normal([1, 5, 5, 6], seed=[1, 2]) * 3.0
  assert not _fused(_op_types(ours, [1, 5, 5, 6]))
  expected = stock(x, training=False)
  np.testing.assert_allclose(ours(x, training=False), expected, rtol=1e-5, atol=1e-5)
  # A frozen layer (trainable=False) normalizes with the moving statistics even in training.
  ours.trainable = stock.trainable = False
  np.testing.assert_allclose(ours(x, training=True), stock(x, training=True),
                             rtol=1e-5, atol=1e-5)


def test_multiply_add_form_only_at_batch_1_with_onednn_in_inference(onednn, monkeypatch):
  del onednn
  layer = batch_norm("bn")
  assert {"Mul", "AddV2"} <= _op_types(layer, [1, 4, 4, 3])
  assert not _fused(_op_types(layer, [1, 4, 4, 3]))
  assert _fused(_op_types(layer, [2, 4, 4, 3]))        # batch 8 is faster fused
  assert _fused(_op_types(layer, [None, 4, 4, 3]))     # unknown batch: the fused form
  assert _fused(_op_types(layer, [1, 4, 4, 3], training=True))
  with stock_inference_form():                          # FLOP counting
    assert _fused(_op_types(layer, [1, 4, 4, 3]))
  monkeypatch.setattr(normalization, "cpu_has_avx512", lambda: True)
  assert _fused(_op_types(layer, [1, 4, 4, 3]))        # AVX-512: oneDNN is fast fused


def _randomized(model: keras.Model, seed: int) -> keras.Model:
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    value = rng.normal(size=weight.shape)
    weight.assign(np.abs(value) + 0.5 if "variance" in weight.name else value)
  return model


def _conv_then_bn(conv: keras.layers.Layer, seed: int, activation=None):
  """A functional conv -> detlab BN (-> activation) model with random weights and
  non-trivial statistics."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((8, 8, 4))
  outputs = BatchNormalization(name="bn")(conv(inputs))
  if activation is not None:
    outputs = activation(outputs)
  return _randomized(keras.Model(inputs, outputs), seed)


def _traced(model, x, stock: bool = False):
  function = tf.function(lambda t: model(t, training=False))
  if stock:
    with stock_inference_form():
      concrete = function.get_concrete_function(x)
  else:
    concrete = function.get_concrete_function(x)
  return concrete(x), concrete.graph


@pytest.mark.parametrize("batch", [1, 2])
def test_bn_after_a_depthwise_conv_folds_into_it(onednn, batch):
  del onednn
  model = _conv_then_bn(keras.layers.DepthwiseConv2D(3, strides=2, padding="same",
                                                     depth_multiplier=2, use_bias=False), 1)
  x = tf.random.stateless_normal([batch, 8, 8, 4], seed=[5, 6])
  expected, stock_graph = _traced(model, x, stock=True)
  folded, graph = _traced(model, x)
  np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)
  assert _fused({op.type for op in stock_graph.get_operations()})
  ops = [op for op in graph.get_operations() if op.type in ("DepthwiseConv2dNative", "BiasAdd")]
  assert not _fused({op.type for op in graph.get_operations()})
  # the output is the folded conv's BiasAdd (the unfolded conv is left unused)
  assert ops[-1].type == "BiasAdd" and ops[-1].inputs[0].op.type == "DepthwiseConv2dNative"


def _op_types_of(graph):
  return [op.type for op in graph.get_operations()]


@pytest.mark.parametrize("batch", [1, 2])
def test_bn_after_a_depthwise_conv_of_multiplier_1_is_a_grouped_conv(onednn, batch):
  """Conv2D's grouped form, which grappler fuses with its bias and swish into one oneDNN
  convolution; exports (`portable_forms`) keep the depthwise op, which every runtime has."""
  del onednn
  model = _conv_then_bn(keras.layers.DepthwiseConv2D(5, strides=2, padding="same",
                                                     use_bias=False), 4,
                        activation=lambda t: t * tf.sigmoid(t))
  x = tf.random.stateless_normal([batch, 8, 8, 4], seed=[5, 7])
  expected, _ = _traced(model, x, stock=True)
  grouped, graph = _traced(model, x)
  np.testing.assert_allclose(grouped, expected, rtol=1e-5, atol=1e-5)
  (bias_add,) = [op for op in graph.get_operations() if op.type == "BiasAdd"]
  conv = bias_add.inputs[0].op
  assert conv.type == "Conv2D" and conv.inputs[1].shape == [5, 5, 1, 4]
  with normalization.portable_forms():
    portable, graph = _traced(model, x)
  np.testing.assert_allclose(portable, expected, rtol=1e-5, atol=1e-5)
  (bias_add,) = [op for op in graph.get_operations() if op.type == "BiasAdd"]
  assert bias_add.inputs[0].op.type == "DepthwiseConv2dNative"
  assert "Conv2D" not in _op_types_of(graph)


@pytest.mark.parametrize("conv", [keras.layers.Conv2D, keras.layers.SeparableConv2D])
def test_a_reduced_precision_conv_takes_the_bn_into_its_kernel_and_bias(onednn, conv):
  """mixed_bfloat16: grappler leaves a bfloat16 Conv2D + FusedBatchNorm unfused; folded, the
  conv carries a BiasAdd (and the swish after it fuses). float32 keeps the FusedBatchNorm."""
  del onednn
  policy = keras.mixed_precision.Policy("mixed_bfloat16")
  keras.utils.set_random_seed(8)
  inputs = keras.Input((8, 8, 4))
  outputs = BatchNormalization(name="bn", dtype=policy)(
      conv(5, 3, padding="same", use_bias=True, dtype=policy)(inputs))
  model = _randomized(keras.Model(inputs, outputs), 8)
  x = tf.random.stateless_normal([2, 8, 8, 4], seed=[9, 10])
  expected, _ = _traced(model, x, stock=True)
  folded, graph = _traced(model, x)
  ops = _op_types_of(graph)
  assert not _fused(set(ops))
  bias_add = graph.outputs[0].op
  while bias_add.type == "Identity":
    bias_add = bias_add.inputs[0].op
  assert bias_add.type == "BiasAdd" and bias_add.outputs[0].dtype == tf.bfloat16
  conv_op = bias_add.inputs[0].op
  assert conv_op.type == "Conv2D" and conv_op.inputs[1].op.inputs[0].op.type == "Mul"  # k * a
  expected = tf.cast(expected, tf.float32)
  np.testing.assert_allclose(tf.cast(folded, tf.float32), expected,
                             atol=0.02 * float(tf.reduce_max(tf.abs(expected))))


def _gated_projection(seed: int, kernel_size: int = 1, strides: int = 1):
  """MBConv's tail: x * gate (gate [N, 1, 1, C], the SE excitation) -> conv -> detlab BN."""
  keras.utils.set_random_seed(seed)
  images, gate = keras.Input((6, 5, 8)), keras.Input((1, 1, 8))
  gated = keras.layers.multiply([images, gate])
  conv = keras.layers.Conv2D(3, kernel_size, strides=strides, padding="same", use_bias=False)
  outputs = BatchNormalization(name="bn")(conv(gated))
  return _randomized(keras.Model([images, gate], outputs), seed)


@pytest.mark.parametrize("batch", [1, 3, None])
def test_squeeze_excite_gate_and_bn_fold_into_the_projection_as_one_batched_matmul(
    onednn, batch):
  del onednn
  model = _gated_projection(5)
  x = [tf.random.stateless_normal([3, 6, 5, 8], seed=[1, 2]),
       tf.random.stateless_uniform([3, 1, 1, 8], seed=[3, 4])]
  specs = [tf.TensorSpec([batch] + t.shape[1:]) for t in x] if batch is None else None
  if batch is not None:
    x = [t[:batch] for t in x]
  function = tf.function(lambda t: model(t, training=False))
  with stock_inference_form():
    stock = function.get_concrete_function(specs or x)
  expected, stock_graph = stock(x), stock.graph
  concrete = tf.function(lambda t: model(t, training=False)).get_concrete_function(specs or x)
  np.testing.assert_allclose(concrete(x), expected, rtol=1e-5, atol=1e-5)
  assert "BatchMatMulV2" not in _op_types_of(stock_graph)
  ops = _op_types_of(concrete.graph)
  assert "BatchMatMulV2" in ops and not _fused(set(ops))
  matmul = [op for op in concrete.graph.get_operations() if op.type == "BatchMatMulV2"][0]
  assert matmul.inputs[0].op.type == "Reshape"  # reads x, not the gated product


@pytest.mark.parametrize("kernel_size,strides", [(3, 1), (1, 2)])
def test_a_projection_that_is_not_a_1x1_stride_1_conv_keeps_the_gated_product(
    onednn, kernel_size, strides):
  del onednn
  model = _gated_projection(6, kernel_size, strides)
  x = [tf.random.stateless_normal([2, 6, 5, 8], seed=[1, 2]),
       tf.random.stateless_uniform([2, 1, 1, 8], seed=[3, 4])]
  concrete = tf.function(lambda t: model(t, training=False)).get_concrete_function(x)
  assert "BatchMatMulV2" not in _op_types_of(concrete.graph)


_SERVE_WITHOUT_ONEDNN = """
import sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = tf.constant(np.load(sys.argv[2]))
np.save(sys.argv[3], loaded.signatures["serving_default"](input_tensor=images)["outputs"])
"""


class _Serving:
  """The part of a DetectionServing that export_saved_model uses, around any model."""

  def __init__(self, model):
    self.model = model

  def serve(self, input_type):
    del input_type
    return lambda images: {"outputs": self.model(_model_input(images), training=False)}


def _model_input(images):
  """uint8 [N, 8, 8, 3] -> float [N, 8, 8, 4] (the exporter's input signature has 3 channels)."""
  x = tf.ensure_shape(tf.cast(images, tf.float32) / 255.0, [None, 8, 8, 3])
  return tf.concat([x, x[..., :1]], axis=-1)


def test_an_exported_saved_model_runs_where_onednn_is_off(tmp_path):
  """The grouped Conv2D form runs on oneDNN only (grappler's Eigen fused conv refuses grouped
  convolutions); export_saved_model traces in `portable_forms()`, so its SavedModel serves in
  a process with TF_ENABLE_ONEDNN_OPTS=0 and gives the traced model's outputs."""
  from detlab.export.saved_model import export_saved_model  # pylint: disable=import-outside-toplevel
  model = _conv_then_bn(keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False), 7,
                        activation=lambda t: t * tf.sigmoid(t))
  images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  export_saved_model(_Serving(model), str(tmp_path / "saved_model"), batch_size=None)
  np.save(tmp_path / "images.npy", images)
  script = tmp_path / "serve.py"
  script.write_text(_SERVE_WITHOUT_ONEDNN)
  subprocess.run([sys.executable, str(script), str(tmp_path / "saved_model"),
                  str(tmp_path / "images.npy"), str(tmp_path / "outputs.npy")], check=True,
                 env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", CUDA_VISIBLE_DEVICES=""))
  expected = model(_model_input(images), training=False)
  np.testing.assert_allclose(np.load(tmp_path / "outputs.npy"), expected, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_bn_after_a_separable_conv_with_bias_takes_the_conv_output(onednn, monkeypatch, batch):
  del onednn
  monkeypatch.setattr(normalization, "cpu_has_avx512", lambda: True)
  model = _conv_then_bn(keras.layers.SeparableConv2D(5, 3, padding="same", use_bias=True), 2)
  x = tf.random.stateless_normal([batch, 8, 8, 4], seed=[7, 8])
  expected, _ = _traced(model, x, stock=True)
  shifted, graph = _traced(model, x)
  np.testing.assert_allclose(shifted, expected, rtol=1e-5, atol=1e-5)
  # the FusedBatchNorm reads the pointwise Conv2D directly, so grappler can fuse the two
  (bn,) = [op for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]
  assert bn.inputs[0].op.type == "Conv2D"
  monkeypatch.setattr(normalization, "cpu_has_avx512", lambda: False)  # multiply-add at bs 1
  shifted, _ = _traced(model, x)
  np.testing.assert_allclose(shifted, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [keras.layers.SeparableConv2D, keras.layers.Conv2D])
def test_a_frozen_bn_in_a_training_pass_passes_gradients_to_the_conv_bias(onednn, conv):
  """Fine-tuning with frozen BN (quantization-aware training freezes it): a traced training
  pass keeps tf_keras' form, whose gradient reaches the conv's bias (the inference rewrite
  moves the bias into the FusedBatchNorm's mean, which has no gradient)."""
  del onednn
  model = _conv_then_bn(conv(5, 3, padding="same", use_bias=True), 3)
  model.get_layer("bn").trainable = False
  x = tf.random.stateless_normal([2, 8, 8, 4], seed=[1, 2])

  @tf.function
  def gradients():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(model(x, training=True)))
    return tape.gradient(loss, model.trainable_variables)

  grads = dict(zip([v.name for v in model.trainable_variables], gradients()))
  bias = [name for name in grads if name.endswith("bias:0")]
  assert bias and all(grads[name] is not None for name in bias)
  assert not any(name.endswith(("gamma:0", "beta:0")) for name in grads)


def test_without_onednn_the_stock_op_is_kept(monkeypatch):
  monkeypatch.setattr(normalization, "onednn_enabled", lambda: False)
  assert _fused(_op_types(batch_norm("bn"), [1, 4, 4, 3]))


def test_training_pass_and_moving_statistics_equal_stock_layer():
  ours, stock = _pair(momentum=0.9)
  x = tf.random.stateless_normal([4, 5, 5, 6], seed=[3, 4]) + 2.0
  np.testing.assert_allclose(ours(x, training=True), stock(x, training=True), rtol=1e-5,
                             atol=1e-5)
  for a, b in zip(ours.weights, stock.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_mixed_precision_inference_keeps_the_compute_dtype(onednn):
  del onednn
  layer = BatchNormalization(dtype=keras.mixed_precision.Policy("mixed_bfloat16"))
  out = layer(tf.ones([1, 2, 2, 3], tf.bfloat16), training=False)
  assert out.dtype == tf.bfloat16
  assert layer.moving_mean.dtype == tf.float32


def test_config_round_trip_keeps_the_class():
  layer = batch_norm("bn", synchronized=True, scale=False)
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert isinstance(clone, BatchNormalization)
  assert clone.synchronized and not clone.scale
