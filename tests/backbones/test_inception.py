"""Inception v1 (GoogLeNet), v2 (BN-Inception), v3 and v4: parameter counts against their
sources, aux heads (training only), keras weight import (v3); feature channels per level in
test_contract.py.

Counts are keras `count_params()` of the inference classifier (1000 classes, aux heads
excluded): kernels, biases, BN beta/gamma and BN moving mean/variance.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.backbones import inception_v1, inception_v2, inception_v3, inception_v4
from detlab.backbones.weight_import import import_keras_weights
from detlab.layers.local_response_norm import LocalResponseNormalization


def _images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def _bn_channels(model: keras.Model) -> int:
  return sum(l.moving_mean.shape[0] for l in model.layers
             if isinstance(l, keras.layers.BatchNormalization))


def _kernel_count(model: keras.Model) -> int:
  return sum(int(np.prod(w.shape)) for w in model.weights if "kernel" in w.name)


def _check_aux(model, size: int, expected_keys: set, weight: float) -> None:
  """Training: logits + aux logits [B, 1000]; inference: logits only, the aux-free graph."""
  images = _images(size)
  outputs = model(images, training=True)
  assert set(outputs) == {"logits"} | expected_keys
  assert all(tuple(v.shape) == (2, 1000) for v in outputs.values())
  assert model.aux_loss_weights == {key: weight for key in expected_keys}
  logits = model(images, training=False)
  assert isinstance(logits, tf.Tensor) and tuple(logits.shape) == (2, 1000)
  np.testing.assert_allclose(model(images).numpy(), logits.numpy(), atol=1e-6)
  assert not [l.name for l in model.inference_model.layers if l.name.startswith("aux")]
  assert [l.name for l in model.training_model.layers if l.name.startswith("aux")]


# ----------------------------------------------------------------------------- GoogLeNet
@pytest.fixture(scope="module")
def googlenet():
  return inception_v1.inception_v1(include_top=True)  # 224x224, two aux heads


def test_googlenet_params_match_paper_table(googlenet) -> None:
  count = googlenet.inference_model.count_params()
  assert count == 6_998_552  # 6,990,272 weights + 8,280 biases
  assert 6.6e6 <= count <= 7.0e6
  # Paper Table 1 "params" column is in units of 1024 (FC 1000K = 1024 x 1000); its sum,
  # 6797.7K, is 6,960,845 weights. Ours (kernels only): 6,990,272 (+0.4 %).
  assert abs(_kernel_count(googlenet.inference_model) / (6797.7 * 1024) - 1) < 0.01


def test_googlenet_aux_heads(googlenet) -> None:
  _check_aux(googlenet, 224, {"aux_logits_4a", "aux_logits_4d"}, 0.3)
  # Per head at 224 (14x14 grid -> 4x4 after 5x5/3 pool): 1x1 conv 128 (+bias),
  # FC 4*4*128 -> 1024, FC 1024 -> 1000. Inputs: 4a 512 channels, 4d 528.
  def head(c: int) -> int:
    return (c * 128 + 128) + (2048 * 1024 + 1024) + (1024 * 1000 + 1000)
  aux_params = googlenet.count_params() - googlenet.inference_model.count_params()
  assert aux_params == head(512) + head(528) == 6_379_728
  assert googlenet.training_model.get_layer("aux_4a_dropout").rate == 0.7
  assert googlenet.inference_model.get_layer("top_dropout").rate == 0.4


def test_local_response_norm_caffe_convention() -> None:
  x = np.random.default_rng(3).normal(size=(1, 2, 2, 7)).astype(np.float32)
  got = LocalResponseNormalization(size=5, alpha=1e-2, beta=0.75)(x).numpy()
  padded = np.pad(x**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
  window = sum(padded[..., i:i + 7] for i in range(5))
  np.testing.assert_allclose(got, x / (1 + 1e-2 / 5 * window) ** 0.75, rtol=1e-5)


# ----------------------------------------------------------------------------- BN-Inception
def test_bn_inception_params_and_layout() -> None:
  model = inception_v2.inception_v2(include_top=True)
  count = model.count_params()
  assert count == 11_204_936
  assert abs(count / 11.2e6 - 1) < 0.01  # ~11.2M (TF-slim inception_v2, BN-Inception paper)
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert len(convs) == len(bns) == 69  # BN after every conv, before its ReLU
  assert not any(c.use_bias for c in convs)
  assert not [c.name for c in convs if c.kernel_size == (5, 5)]  # 5x5 -> two 3x3


# ----------------------------------------------------------------------------- Inception v3
@pytest.fixture(scope="module")
def v3_pair(randomize_keras_model):
  """(random keras InceptionV3, detlab v3 classifier with aux head), both at 299."""
  keras.backend.clear_session()  # keras names unnamed layers conv2d, conv2d_1, ... per session
  reference = keras.applications.InceptionV3(weights=None, classifier_activation=None)
  return randomize_keras_model(reference), inception_v3.inception_v3(include_top=True)


def test_v3_params_equal_keras(v3_pair) -> None:
  reference, model = v3_pair
  assert model.inference_model.count_params() == reference.count_params() == 23_851_784
  # PyTorch ports (gluon-cv/torchvision) count BN gamma+beta, keras beta+mean+var (no gamma):
  assert model.inference_model.count_params() - _bn_channels(model.inference_model) \
      == 23_834_568


def test_v3_aux_head(v3_pair) -> None:
  _check_aux(v3_pair[1], 299, {"aux_logits"}, 0.4)


def test_v3_keras_weight_import_gives_keras_logits(v3_pair) -> None:
  reference, model = v3_pair
  images = _images(299)
  expected = reference(images, training=False).numpy()
  copied = import_keras_weights(model.inference_model, reference)
  assert len(copied) == 94 + 94 + 1  # conv2d_*, batch_normalization_*, predictions
  got = model(images, training=False).numpy()
  assert np.std(expected) > 0.05
  assert np.max(np.abs(got - expected)) <= 1e-4


# ----------------------------------------------------------------------------- Inception v4
def test_v4_params_and_aux_head() -> None:
  model = inception_v4.inception_v4(include_top=True)
  count = model.inference_model.count_params()
  assert count == 42_711_400
  assert abs(count / 42.7e6 - 1) < 0.01  # TF-slim inception_v4: 42.7M
  # timm / Cadene's PyTorch port (same layout as TF-slim) counts BN gamma+beta: 42,679,816.
  assert count - _bn_channels(model.inference_model) == 42_679_816
  _check_aux(model, 299, {"aux_logits"}, 0.4)


# ----------------------------------------------------------------------------- features
# Feature levels and channels of v1-v4 (include_top=False): tests/backbones/test_contract.py,
# which builds every registered backbone once.
