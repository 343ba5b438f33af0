"""Inception-ResNet v1 and v2: parameter counts, keras weight import (v2), aux head (v2),
residual structure, v1 feature channels with custom scales (v2: test_contract.py)."""
import functools

import numpy as np
import pytest
import tf_keras as keras

from detlab.backbones import inception_resnet
from detlab.backbones.classifier import AuxLogitsClassifier
from detlab.backbones.weight_import import import_keras_weights
from detlab.layers.scaled_residual import ScaledResidual


def _images(size: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def _bn_channels(model: keras.Model) -> int:
  return sum(l.moving_mean.shape[0] for l in model.layers
             if isinstance(l, keras.layers.BatchNormalization))


@pytest.fixture(scope="module")
def v2_pair(randomize_keras_model):
  """(random keras InceptionResNetV2, detlab classifier with aux head), both at 299."""
  keras.backend.clear_session()  # keras names unnamed layers conv2d, conv2d_1, ... per session
  reference = keras.applications.InceptionResNetV2(weights=None, classifier_activation=None)
  return randomize_keras_model(reference), inception_resnet.inception_resnet_v2(include_top=True)


def test_v2_params_equal_keras(v2_pair) -> None:
  reference, model = v2_pair
  count = model.inference_model.count_params()
  assert count == reference.count_params() == 55_873_736
  # Cadene's PyTorch port counts BN gamma+beta instead of keras' beta+mean+var:
  assert count - _bn_channels(model.inference_model) == 55_843_464


def test_v2_aux_head_only_in_training(v2_pair) -> None:
  model = v2_pair[1]
  images = _images(299)
  outputs = model(images, training=True)
  assert sorted(outputs) == ["aux_logits", "logits"]
  assert tuple(outputs["aux_logits"].shape) == tuple(outputs["logits"].shape) == (2, 1000)
  assert model.aux_loss_weights == {"aux_logits": 0.4}
  assert tuple(model(images, training=False).shape) == (2, 1000)
  assert not [l for l in model.inference_model.layers if l.name.startswith("aux")]


def test_v2_keras_weight_import_gives_keras_logits(v2_pair) -> None:
  reference, model = v2_pair
  images = _images(299)
  expected = reference(images, training=False).numpy()
  copied = import_keras_weights(model.inference_model, reference)
  assert len(copied) == len([l for l in reference.layers if l.weights])
  got = model(images, training=False).numpy()
  assert np.std(expected) > 0.05
  assert np.max(np.abs(got - expected)) <= 1e-4


def _check_residuals(model: keras.Model, scales: list, expansion_name: str,
                     width: int) -> None:
  """Residual scales in block order; no BN on the sums; 1x1 linear expansion with bias."""
  assert [l.scale for l in model.layers if isinstance(l, ScaledResidual)] == scales
  for layer in model.layers:
    if isinstance(layer, ScaledResidual):
      consumers = {type(n.outbound_layer).__name__ for n in layer._outbound_nodes}
      assert "BatchNormalization" not in consumers
  expansion = model.get_layer(expansion_name)
  assert expansion.use_bias and expansion.activation is keras.activations.linear
  assert expansion.kernel_size == (1, 1) and expansion.filters == width


def test_v2_residual_structure(v2_pair) -> None:
  model = v2_pair[1].inference_model
  _check_residuals(model, [0.17] * 10 + [0.1] * 20 + [0.2] * 9 + [1.0], "block17_3_conv", 1088)


def test_v1_params_from_paper_figures() -> None:
  """No published 1000-class count exists. Source: the paper's figures (Fig. 14 stem, Figs.
  10/11/13 blocks at 5/10/5 repeats, Fig. 7 Reduction-A with k, l, m, n = 192, 192, 256, 384,
  Fig. 12 Reduction-B). Cross-check: facenet's Keras port of the same layout, which has one
  extra IR-C block and a 128-d bottleneck (Dense without bias + BN without gamma) instead of
  the 1000-class FC, reports 22,808,144 parameters."""
  model = inception_resnet.inception_resnet_v1(include_top=True)
  count = model.count_params()
  assert count == 22_769_848
  fc = 1792 * 1000 + 1000
  ir_c = 2 * (1792 * 192 + 3 * 192) + 2 * (192 * 192 * 3 + 3 * 192) + 384 * 1792 + 1792
  bottleneck = 1792 * 128 + 3 * 128
  assert count - fc + ir_c + bottleneck == 22_808_144
  assert not isinstance(model, AuxLogitsClassifier)  # v1: no aux head (none published)


# v2's feature levels and channels (its builder's defaults): tests/backbones/test_contract.py.
def test_v1_feature_levels_channels_and_configurable_scales(check_feature_levels) -> None:
  model = check_feature_levels(
      functools.partial(inception_resnet.inception_resnet_v1, residual_scales=(0.3, 0.25, 0.1)),
      {2: 192, 3: 256, 4: 896, 5: 1792})
  _check_residuals(model, [0.3] * 5 + [0.25] * 10 + [0.1] * 4 + [1.0], "block8_2_conv", 1792)
