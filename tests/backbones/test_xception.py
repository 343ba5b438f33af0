"""Xception: parameter count and keras weight import (model and .h5 file, classifier and
feature extractor), layer layout (feature channels per level: test_contract.py)."""
import numpy as np
import pytest
import tf_keras as keras

from detlab.backbones import xception
from detlab.backbones.weight_import import import_keras_weights

SIZE = 71  # the smallest input keras' Xception accepts


def _images(size: int = SIZE, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(randomize_keras_model):
  keras.backend.clear_session()  # keras names unnamed layers conv2d, add, ... per session
  model = keras.applications.Xception(weights=None, input_shape=(SIZE, SIZE, 3),
                                      classifier_activation=None)
  return randomize_keras_model(model)


def test_params_equal_keras(reference) -> None:
  model = xception.xception(include_top=True, input_shape=(SIZE, SIZE, 3))
  assert model.count_params() == reference.count_params() == 22_910_480


def test_import_from_model_and_h5_file(reference, tmp_path) -> None:
  expected = reference(_images(), training=False).numpy()
  model = xception.xception(include_top=True, input_shape=(SIZE, SIZE, 3))
  before = model(_images(), training=False).numpy()
  copied = import_keras_weights(model, reference)
  assert len(copied) == len([l for l in reference.layers if l.weights])
  got = model(_images(), training=False).numpy()
  assert np.std(expected) > 0.05 and np.max(np.abs(before - expected)) > 1e-2
  assert np.max(np.abs(got - expected)) <= 1e-4

  path = str(tmp_path / "xception.h5")
  reference.save_weights(path)
  from_file = xception.xception(include_top=True, input_shape=(SIZE, SIZE, 3))
  keras.backend.clear_session()  # the importer builds a fresh keras Xception for the file
  import_keras_weights(from_file, path)
  assert np.max(np.abs(from_file(_images(), training=False).numpy() - expected)) <= 1e-4


def test_feature_extractor_takes_keras_notop_weights(randomize_keras_model) -> None:
  """With padding='valid' the extractor's level 5 is keras' include_top=False output."""
  keras.backend.clear_session()
  notop = randomize_keras_model(keras.applications.Xception(
      weights=None, include_top=False, input_shape=(SIZE, SIZE, 3)), seed=4)
  features = xception.xception(padding="valid", input_shape=(SIZE, SIZE, 3))
  import_keras_weights(features, notop)
  expected = notop(_images(), training=False).numpy()
  got = features(_images(), training=False)["5"].numpy()
  assert got.shape == expected.shape == (2, 3, 3, 2048)
  assert np.max(np.abs(got - expected)) <= 1e-4


def test_separable_convs_and_bn_after_every_conv(built_backbone) -> None:
  model = built_backbone("xception")  # = xception.xception(include_top=False), read only
  convs = [l for l in model.layers
           if isinstance(l, (keras.layers.Conv2D, keras.layers.SeparableConv2D))]
  assert len([c for c in convs if isinstance(c, keras.layers.SeparableConv2D)]) == 34
  assert len(convs) == 34 + 2 + 4  # + 2 stem convs + 4 strided 1x1 shortcuts
  for conv in convs:
    assert not conv.use_bias
    assert conv.activation is keras.activations.linear  # nothing between depthwise/pointwise
    consumers = [type(n.outbound_layer).__name__ for n in conv._outbound_nodes]
    assert consumers == ["BatchNormalization"], conv.name


# Feature levels and channels (include_top=False): tests/backbones/test_contract.py.
