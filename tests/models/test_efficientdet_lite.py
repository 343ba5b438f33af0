"""EfficientDet-Lite0 ... Lite4 and Lite3x built through their gin files equal google/automl's
TF2 EfficientDetNet('efficientdet-liteN') (90 classes): parameter counts exactly, and
multiply-adds within 1 % of the reference's TF-profiler count at the native size.

As for D0-D7x (test_efficientdet_scaling.py): Lite0 is built at its native 320 and profiled
there; the others are counted at 128 (counts do not depend on the size, and their build is
then the cost of making the layers), and their multiply-adds are checked on request:
  DETLAB_FULL_SCALING=1 python -m pytest tests/models/test_efficientdet_lite.py
(measured: 0.9762 / 1.9722 / 3.3814 / 7.5010 / 14.0173 / 20.2172 G).
"""
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import config
from detlab.backbones import EFFICIENTNET_LITE, input_convention
from detlab.backbones.contract import features_model
from detlab.benchmark import count_gmacs
from detlab.export.fold import fold_batch_norms
from detlab.export.saved_model import DetectionServing
from detlab.models.efficientdet import efficientdet
from gin_detectors import build_from_gin, native_gmacs  # pylint: disable=import-error

# name: (params with 90 classes, multiply-adds in billions at the native size), the reference.
REFERENCE = {
    "lite0": (3_290_606, 0.976), "lite1": (4_311_390, 1.972), "lite2": (5_324_894, 3.381),
    "lite3": (8_455_054, 7.501), "lite3x": (9_392_574, 14.017), "lite4": (15_286_398, 20.217),
}
# automl's hparams_config efficientdet_lite_param_dict: backbone, image size, BiFPN width,
# cells, head repeats, anchor scale (4.0 where it keeps the default).
TABLE = {
    "lite0": ("efficientnet_lite0", 320, 64, 3, 3, 3.0),
    "lite1": ("efficientnet_lite1", 384, 88, 4, 3, 3.0),
    "lite2": ("efficientnet_lite2", 448, 112, 5, 3, 3.0),
    "lite3": ("efficientnet_lite3", 512, 160, 6, 4, 4.0),
    "lite3x": ("efficientnet_lite3", 640, 200, 6, 4, 3.0),
    "lite4": ("efficientnet_lite4", 640, 224, 7, 4, 4.0),
}
FULL = os.environ.get("DETLAB_FULL_SCALING") == "1"



@pytest.fixture(scope="module")
def lite0():
  model, size = build_from_gin("lite0")
  assert size == 320
  return model


def test_lite0_at_its_native_size_has_the_reference_count_and_multiply_adds(lite0):
  assert lite0.count_params() == REFERENCE["lite0"][0]
  gmacs = count_gmacs(lite0, 320)
  assert gmacs == pytest.approx(REFERENCE["lite0"][1], rel=0.01), gmacs


def test_lite0_is_relu6_sum_fusion_no_se_with_the_lite_input_convention(lite0):
  assert lite0.fpn.activation == "relu6" and lite0.fpn.fusion == "sum"
  assert lite0.class_net.activation == lite0.box_net.activation == "relu6"
  assert not [w for w in lite0.fpn.weights if "edge_weights" in w.name]
  backbone = lite0.backbone
  assert backbone.name == "efficientnet-lite0"
  assert not any("_se_" in l.name for l in backbone.layers)
  assert {l.activation.__name__ for l in backbone.layers
          if isinstance(l, keras.layers.Activation)} == {"relu6"}
  # Lite keeps stochastic depth in the detector (automl: survival 0.8; only 'b0' drops it).
  assert max(l.rate for l in backbone.layers if l.name.endswith("_drop")) > 0.15
  convention = input_convention(lite0)
  assert convention == EFFICIENTNET_LITE.at_size(224)
  assert (convention.mean, convention.std) == ((127.0,) * 3, (128.0,) * 3)
  # What export and serving apply (every format normalises by DetectionServing.convention):
  # white 255 -> (255 - 127) / 128 = 1, not ImageNet's ~2.2-2.6.
  serving = DetectionServing(lite0)
  assert serving.convention == convention
  images, _ = serving.preprocess_one(tf.fill([160, 200, 3], tf.constant(255, tf.uint8)))
  np.testing.assert_allclose(images[0, 0].numpy(), [1.0, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("name", [n for n in REFERENCE if n != "lite0"])
def test_parameter_count_is_the_reference_at_a_small_size(name):
  model, size = build_from_gin(name, 128)
  assert size == 128 and model.anchors.image_size == 128
  assert model.count_params() == REFERENCE[name][0], name
  keras.backend.clear_session()


@pytest.mark.skipif(not FULL, reason="Lite1-Lite4 at native size: set DETLAB_FULL_SCALING=1")
def test_lite1_to_lite4_multiply_adds_at_the_native_size_within_one_percent():
  for name in [n for n in REFERENCE if n != "lite0"]:
    gmacs = native_gmacs(name)
    assert gmacs == pytest.approx(REFERENCE[name][1], rel=0.01), (name, gmacs)


@pytest.mark.parametrize("name", list(TABLE))
def test_gin_file_is_the_reference_table_row(name):
  gin.clear_config()
  try:
    config.parse_gin([f"efficientdet_{name}.gin"], [])
    q = gin.query_parameter
    backbone, size, width, cells, repeats, anchor_scale = TABLE[name]
    assert q("efficientdet.backbone_fn").selector == backbone
    assert (q("%IMAGE_SIZE"), q("efficientdet.fpn_width"), q("efficientdet.fpn_cells"),
            q("efficientdet.head_repeats"), q("efficientdet.fusion"),
            q("efficientdet.activation"), q("efficientdet.anchor_scale"),
            q("efficientdet.min_level"), q("efficientdet.max_level")) == (
                size, width, cells, repeats, "sum", "relu6", anchor_scale, 3, 7)
  finally:
    gin.clear_config()


def _tiny_backbone(input_shape, sync_bn: bool = False) -> keras.Model:
  """Four strided 3x3 convs -> levels 2..5 (8/16/24/32 channels)."""
  del sync_bn
  inputs = keras.Input(shape=input_shape)
  x, endpoints = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs), {}
  for level, channels in zip(range(2, 6), (8, 16, 24, 32)):
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same")(x)
    endpoints[str(level)] = x
  return features_model(inputs, endpoints, 2, 5, name="tiny")


def test_batch_norm_folding_keeps_relu6():
  """Export folds BNs into a rebuilt detector: it must keep the BiFPN/head activation."""
  keras.backend.clear_session()
  keras.utils.set_random_seed(3)
  model = efficientdet(_tiny_backbone, num_classes=3, image_size=64, fpn_width=16,
                       fpn_cells=1, head_repeats=1, fusion="sum", activation="relu6")
  for layer in model.submodules:  # BN statistics away from identity, so folding matters
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.moving_mean.assign(tf.random.stateless_uniform(layer.moving_mean.shape, [1, 2],
                                                           -0.5, 0.5))
  folded = fold_batch_norms(model)
  assert folded.fpn.activation == folded.class_net.activation == "relu6"
  images = tf.random.stateless_normal([1, 64, 64, 3], [4, 5]) * 3.0
  for ours, theirs in zip(tf.nest.flatten(model(images, training=False)),
                          tf.nest.flatten(folded(images, training=False))):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)
