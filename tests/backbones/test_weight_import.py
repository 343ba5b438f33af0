"""Weight import from tf_keras.applications: detlab logits equal keras logits after the copy.

End to end per imported family (`test_raw_image_keras_way_equals_detlab_way`): one raw uint8
image through keras' own `preprocess_input` + the keras model, and through detlab's detection
input pipeline (PNG record -> DetectionParser with the backbone's `input_convention`) + the
imported detlab classifier, gives the same logits.

Convention checked here: detlab takes the output of the keras app's in-model preprocessing
(`keras_preprocessing`): V1 x/255 then Normalization; V2-B* (x/255 - ImageNet mean) / std.
Keras weights are random (keras' own random init for kernels, random values for biases, BN
gamma/beta/moving statistics -- conftest's `randomize_keras_model` -- and V1's Normalization
statistics).
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.backbones import (efficientnet, efficientnet_v2, inception_resnet, inception_v3,
                              input_convention, xception)
from detlab.backbones.weight_import import (WeightImportError, fresh_keras_names,
                                            import_keras_weights, keras_preprocessing)
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.tf_example import build_example, encode_png
from detlab.detection.anchors import AnchorConfig

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


# family -> (keras app, its module's preprocess_input, detlab builder, image size). Sizes are
# multiples of 32 (the parser's anchor grid) at or above keras' minimum (75 Inception, 71
# Xception); the Inception classifiers are built without aux heads (too small a grid for them).
END_TO_END = {
    "efficientnet_b0": (keras.applications.EfficientNetB0, keras.applications.efficientnet,
                        efficientnet.efficientnet_b0, 64),
    "efficientnet_b3": (keras.applications.EfficientNetB3, keras.applications.efficientnet,
                        efficientnet.efficientnet_b3, 64),
    "efficientnetv2_b0": (keras.applications.EfficientNetV2B0,
                          keras.applications.efficientnet_v2, efficientnet_v2.efficientnetv2_b0,
                          64),
    "efficientnetv2_s": (keras.applications.EfficientNetV2S, keras.applications.efficientnet_v2,
                         efficientnet_v2.efficientnetv2_s, 64),
    "inception_v3": (keras.applications.InceptionV3, keras.applications.inception_v3,
                     inception_v3.inception_v3, 96),
    "inception_resnet_v2": (keras.applications.InceptionResNetV2,
                            keras.applications.inception_resnet_v2,
                            inception_resnet.inception_resnet_v2, 96),
    "xception": (keras.applications.Xception, keras.applications.xception, xception.xception,
                 96),
}


def _published_normalization(model: keras.Model) -> None:
  """keras EfficientNet V1's input Normalization as its published ImageNet file makes it act:
  the file stores mean and std (as "variance") and the app then divides by sqrt(std) again,
  net (x / 255 - ImageNet mean) / ImageNet std. Built with weights=None, the app lacks that
  extra Rescaling, so the equivalent statistics (mean, std**2) are set here."""
  for layer in model.layers:
    if isinstance(layer, keras.layers.Normalization) and layer.weights:
      _, _, count = layer.get_weights()
      layer.set_weights([IMAGENET_MEAN, IMAGENET_STD**2, count])


def _damp_residual_branches(model: keras.Model) -> None:
  """Scales the last BN of every MBConv branch by 0.3. With random BN statistics the deep
  EfficientNets (V2-S: 40 residual blocks) blow activations up to ~1e4, where float rounding
  alone moves keras' own logits by ~100 between batch sizes; damped, they stay O(1)."""
  for layer in model.layers:
    if layer.name.endswith("project_bn"):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights([gamma * 0.3, beta * 0.3, mean, variance])


def _through_detlab_pipeline(raw: np.ndarray, convention) -> np.ndarray:
  """The eval-form `images` of DetectionParser for a PNG record of `raw` (same size: no
  resize, no padding)."""
  size = raw.shape[0]
  example = build_example(encoded_image=encode_png(raw), image_format="png", source_id="1",
                          height=size, width=size, boxes_yxyx=[[4, 4, 20, 20]],
                          category_ids=[1], category_names=["thing"])
  parser = DetectionParser(InputConfig("unused", is_training=False),
                           AnchorConfig(image_size=size, min_level=3, max_level=5),
                           num_classes=1, convention=convention)
  return parser(tf.constant(example.SerializeToString()))["images"].numpy()[None]


@pytest.mark.parametrize("name", list(END_TO_END))
def test_raw_image_keras_way_equals_detlab_way(name, randomize_keras_model) -> None:
  keras_app, keras_module, builder, size = END_TO_END[name]
  shape = (size, size, 3)
  with fresh_keras_names():  # Inception/Xception layers keep keras' auto-names
    keras_model = keras_app(weights=None, input_shape=shape, classifier_activation=None)
  randomize_keras_model(keras_model, seed=5)
  _published_normalization(keras_model)
  _damp_residual_branches(keras_model)
  extra = {"aux_logits": False} if "inception" in name else {}
  detlab_model = builder(include_top=True, input_shape=shape, **extra)
  import_keras_weights(detlab_model, keras_model)

  raw = np.random.default_rng(6).integers(0, 256, (size, size, 3), dtype=np.uint8)
  keras_input = keras_module.preprocess_input(raw[None].astype(np.float32))
  expected = keras_model(keras_input, training=False).numpy()
  convention = input_convention(builder)
  got = detlab_model(_through_detlab_pipeline(raw, convention), training=False).numpy()
  assert np.std(expected) > 0.05
  assert np.max(np.abs(got - expected)) <= 1e-4, name
  keras.backend.clear_session()


def test_conventions_per_family() -> None:
  """keras apps: EfficientNet V1 and V2-B* ImageNet mean/std, V2-S/M/L x / 128 - 1, Inception
  and Xception x / 127.5 - 1 (mode 'tf'); google/automl's detector: ImageNet mean/std x 255."""
  raw = np.array([[[0, 128, 255]]], np.uint8)
  imagenet = (np.array([0, 128, 255]) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  for name in ("efficientnet_b0", "efficientnet-b7", "efficientnetv2_b3"):
    np.testing.assert_allclose(input_convention(name).normalize(raw).numpy()[0, 0], imagenet,
                               atol=1e-6)
  np.testing.assert_allclose(input_convention("efficientnetv2_s").normalize(raw).numpy()[0, 0],
                             [-1.0, 0.0, 255 / 128 - 1], atol=1e-6)
  for name in ("inception_v1", "inception_v2", "inception_v3", "inception_resnet_v2",
               "xception"):
    np.testing.assert_allclose(input_convention(name).normalize(raw).numpy()[0, 0],
                               [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)
  assert [input_convention(n).native_size for n in ("efficientnet_b3", "efficientnetv2_s",
                                                     "inception_v1", "xception")] == \
      [300, 384, 224, 299]


def test_convention_lookup_by_builder_model_and_detector() -> None:
  model = xception.xception(input_shape=(71, 71, 3))
  holder = type("Detector", (), {"backbone": model})()
  assert input_convention(model) == input_convention(holder) == input_convention("xception")
  with pytest.raises(ValueError, match="INPUT_CONVENTIONS"):
    input_convention("my_backbone")
  assert input_convention("my_backbone", default=input_convention("xception")).native_size == 299
