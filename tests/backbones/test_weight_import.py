"""Weight import from tf_keras.applications: detlab logits equal keras logits after the copy.

Convention checked here: detlab takes the output of the keras app's in-model preprocessing
(`keras_preprocessing`): V1 x/255 then Normalization; V2-B* (x/255 - ImageNet mean) / std.
Keras weights are random (keras' own random init for kernels, random values for biases, BN
gamma/beta/moving statistics -- conftest's `randomize_keras_model` -- and V1's Normalization
statistics).
"""
import numpy as np
import pytest
import tf_keras as keras

from detlab.backbones import efficientnet, efficientnet_v2
from detlab.backbones.weight_import import (WeightImportError, import_keras_weights,
                                            keras_preprocessing)

SIZE = 64
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FAMILIES = {
    "v1_b0": (keras.applications.EfficientNetB0, efficientnet.efficientnet_b0),
    "v2_b0": (keras.applications.EfficientNetV2B0, efficientnet_v2.efficientnetv2_b0),
}


def _randomize_normalization(model: keras.Model, seed: int) -> None:
  """Non-trivial ImageNet-like statistics for V1's input Normalization layer."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.Normalization) and layer.weights:
      mean, var, count = layer.get_weights()
      layer.set_weights([rng.uniform(0.4, 0.5, mean.shape), rng.uniform(0.04, 0.06, var.shape),
                         count])


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, randomize_keras_model):
  """(name, random keras model, detlab builder) per family."""
  keras_app, builder = FAMILIES[request.param]
  model = keras_app(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  randomize_keras_model(model, seed=1)
  _randomize_normalization(model, seed=1)
  return request.param, model, builder


def _images() -> np.ndarray:
  return np.random.default_rng(2).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)


def _logits(keras_model: keras.Model, detlab_model: keras.Model) -> tuple[np.ndarray, ...]:
  images = _images()
  expected = keras_model(images, training=False).numpy()
  got = detlab_model(keras_preprocessing(keras_model)(images), training=False).numpy()
  return expected, got


def test_import_gives_keras_logits(family) -> None:
  _, keras_model, builder = family
  detlab_model = builder(include_top=True, input_shape=(SIZE, SIZE, 3))
  expected, before = _logits(keras_model, detlab_model)
  copied = import_keras_weights(detlab_model, keras_model)
  _, got = _logits(keras_model, detlab_model)
  assert len(copied) == len([l for l in detlab_model.layers if l.weights])
  assert expected.shape == (2, 1000) and np.std(expected) > 0.05  # not trivially zero
  assert np.max(np.abs(before - expected)) > 1e-2  # the import changed the output
  assert np.max(np.abs(got - expected)) < 1e-4


def test_import_from_h5_file(family, tmp_path) -> None:
  _, keras_model, builder = family
  path = tmp_path / "w.h5"
  keras_model.save_weights(str(path))
  detlab_model = builder(include_top=True, input_shape=(SIZE, SIZE, 3))
  import_keras_weights(detlab_model, str(path))
  expected, got = _logits(keras_model, detlab_model)
  assert np.max(np.abs(got - expected)) < 1e-4


def test_preprocessing_convention(family) -> None:
  name, keras_model, _ = family
  images = _images()
  got = keras_preprocessing(keras_model)(images).numpy()
  if name == "v1_b0":
    norm = next(l for l in keras_model.layers if isinstance(l, keras.layers.Normalization))
    mean, var, _ = norm.get_weights()
    expected = (images / 255.0 - mean) / np.sqrt(var)
  else:
    expected = (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.fixture(scope="module")
def keras_v1_b0(randomize_keras_model):
  model = keras.applications.EfficientNetB0(weights=None, input_shape=(SIZE, SIZE, 3))
  return randomize_keras_model(model, seed=3)


def test_shape_mismatch_is_listed_and_nothing_copied(keras_v1_b0) -> None:
  # Wrong number of classes: only `predictions` differs.
  detlab_model = efficientnet.efficientnet_b0(include_top=True, num_classes=10,
                                              input_shape=(SIZE, SIZE, 3))
  before = [w.numpy() for w in detlab_model.weights]
  with pytest.raises(WeightImportError) as error:
    import_keras_weights(detlab_model, keras_v1_b0)
  message = str(error.value)
  assert "weights differ (kind or shape) (1):" in message
  assert "predictions: keras [kernel(1280, 1000), bias(1000,)] vs detlab [kernel(1280, 10), " \
      "bias(10,)]" in message
  assert "missing" not in message
  for old, new in zip(before, detlab_model.weights):
    np.testing.assert_array_equal(old, new.numpy())


def test_name_mismatch_is_listed(keras_v1_b0) -> None:
  # V1 weights into V2: depthwise convs are `dwconv` vs `dwconv2`, block counts differ.
  detlab_model = efficientnet_v2.efficientnetv2_b0(include_top=True,
                                                   input_shape=(SIZE, SIZE, 3))
  with pytest.raises(WeightImportError) as error:
    import_keras_weights(detlab_model, keras_v1_b0)
  message = str(error.value)
  assert "in keras, missing in detlab" in message and "block1a_dwconv\n" in message
  assert "in detlab, missing in keras" in message and "block4a_dwconv2" in message


def test_unknown_model_for_h5_path_says_what_to_do(tmp_path) -> None:
  model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))], name="mystery")
  path = tmp_path / "w.h5"
  model.save_weights(str(path))
  with pytest.raises(WeightImportError, match="keras_app="):
    import_keras_weights(model, str(path))


def _auto_named_app(include_top: bool = True, weights=None, classes: int = 4,
                    classifier_activation=None) -> keras.Model:
  """A keras-app-like model whose layers keep keras' automatic names (as Inception v3 does)."""
  del include_top, weights, classifier_activation
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(5, 3)(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(classes)(x))


def test_h5_import_of_auto_named_app_uses_fresh_session_names(tmp_path) -> None:
  keras.backend.clear_session()
  reference = _auto_named_app()  # conv2d, batch_normalization, dense
  path = tmp_path / "auto.h5"
  reference.save_weights(str(path))
  detlab_model = _auto_named_app()  # built second: conv2d_1, ..., as a dirty session would
  renamed = {"conv2d_1": "conv2d", "batch_normalization_1": "batch_normalization",
             "dense_1": "dense"}
  for layer in detlab_model.layers:
    layer._name = renamed.get(layer.name, layer.name)  # pylint: disable=protected-access
  keras.layers.Conv2D(1, 1, name="unrelated")  # the caller's session goes on numbering
  import_keras_weights(detlab_model, str(path), keras_app=_auto_named_app)
  images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(detlab_model(images), reference(images), atol=1e-6)
  assert keras.layers.Conv2D(1, 1).name == "conv2d_2"  # caller's counter restored
  keras.backend.clear_session()
