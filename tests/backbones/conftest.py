"""Shared fixtures for backbone tests."""
import math

import numpy as np
import pytest
import tf_keras as keras


def _randomize_keras_model(model: keras.Model, seed: int = 1) -> keras.Model:
  """Random BN gamma/beta/moving statistics and biases (keras' own random init stays on the
  kernels), so that a weight copy that drops or swaps any of them changes the logits."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.set_weights([
          rng.uniform(0.5, 2.0, w.shape) if "moving_variance" in w.name
          else rng.uniform(0.5, 1.5, w.shape) if "gamma" in w.name
          else rng.normal(0.0, 0.2, w.shape) for w in layer.weights])
    elif getattr(layer, "bias", None) is not None:
      weights = layer.get_weights()
      layer.set_weights(weights[:-1] + [rng.normal(0.0, 0.1, weights[-1].shape)])
  return model


@pytest.fixture(scope="session")
def randomize_keras_model():
  """The function (model, seed=1) -> model that randomizes BN statistics and biases in place."""
  return _randomize_keras_model


def _check_feature_levels(builder, channels: dict, size: int = 64) -> keras.Model:
  """builder() (include_top=False) at size S returns {"l": [1, ceil(S/2^l), ., channels[l]]}.
  Returns the model, for further checks."""
  model = builder()
  images = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
  outputs = model(images, training=False)
  got = {key: tuple(value.shape) for key, value in outputs.items()}
  assert got == {str(l): (1, math.ceil(size / 2**l), math.ceil(size / 2**l), channels[l])
                 for l in range(2, 6)}
  return model


@pytest.fixture(scope="session")
def check_feature_levels():
  """The function (builder, {level: channels}, size=64) asserting a backbone's pyramid."""
  return _check_feature_levels
