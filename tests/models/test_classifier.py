"""Classifiers on every registered backbone: the family's paper top (its width and dropout
for every backbone; built and counted for one backbone per family), aux heads in training only,
and the hand-off of the backbone to a detector through `init_mode='backbone'`.

Each backbone's own 1000-class count (keras apps / the papers) is asserted once, in its family's
test: tests/backbones/test_efficientnet.py (V1 B0-B7, V2 B0-L), test_inception.py,
test_inception_resnet.py, test_xception.py, and V2-XL in tests/layers/test_functional.py. A
classifier is that backbone's feature extractor (the same builder, include_top=False; its level
channels in tests/backbones/test_contract.py) plus `heads.classification`'s top, whose only
per-backbone inputs are the HEAD_SPECS entry checked here for every name: so one built classifier
per family, counted against the family's reference, shows the top adds exactly what the
backbone's own include_top form adds. Counts are built at small inputs (they do not depend on
the image size without aux heads).
"""
import functools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.backbones import BACKBONES
from detlab.heads.classification import HEAD_SPECS
from detlab.models.classifier import classifier
from detlab.models.efficientdet import efficientdet
from detlab.training.initialize import initialize_from_checkpoint

# 1000-class inference classifier (aux heads excluded), one backbone per family: keras apps or
# the papers, as the family tests assert them for the backbone's include_top=True form
# (efficientnetv2_b0: test_scheduled_dropout_classifier_takes_any_size_with_the_same_weights).
COUNTS = {"efficientnet_b0": 5_330_564, "efficientnet_lite0": 4_694_024,
          "efficientnetv2_b0": 7_200_312,
          "inception_v1": 6_998_552, "inception_resnet_v1": 22_769_848,
          "xception": 22_910_480}
# Dropout before the FC: EfficientNet V1 paper / reference code, V2 reference code
# `efficientnetv2_params`, GoogLeNet paper, TF-slim (dropout_keep_prob 0.8), Xception paper.
DROPOUT = {"efficientnet_b0": 0.2, "efficientnet_b1": 0.2, "efficientnet_b2": 0.3,
           "efficientnet_b3": 0.3, "efficientnet_b4": 0.4, "efficientnet_b5": 0.4,
           "efficientnet_b6": 0.5, "efficientnet_b7": 0.5,
           "efficientnet_lite0": 0.2, "efficientnet_lite1": 0.2, "efficientnet_lite2": 0.3,
           "efficientnet_lite3": 0.3, "efficientnet_lite4": 0.3,
           "efficientnetv2_b0": 0.2, "efficientnetv2_b1": 0.2, "efficientnetv2_b2": 0.3,
           "efficientnetv2_b3": 0.3, "efficientnetv2_s": 0.2, "efficientnetv2_m": 0.3,
           "efficientnetv2_l": 0.4, "efficientnetv2_xl": 0.4,
           "inception_v1": 0.4, "inception_v2": 0.2, "inception_v3": 0.2, "inception_v4": 0.2,
           "inception_resnet_v1": 0.2, "inception_resnet_v2": 0.2, "xception": 0.5}
# EfficientNet's 1x1 top conv (keras apps: 1280 rounded at the width coefficient): V1 B0-B7
# width 1.0, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0; V2 B2 1.1, B3 1.2, the rest 1.0.
TOP_FILTERS = {"efficientnet_b0": 1280, "efficientnet_b1": 1280, "efficientnet_b2": 1408,
               "efficientnet_b3": 1536, "efficientnet_b4": 1792, "efficientnet_b5": 2048,
               "efficientnet_b6": 2304, "efficientnet_b7": 2560,
               # Lite: efficientnet_lite_builder's fixed head, 1280 at every width.
               "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280,
               "efficientnet_lite3": 1280, "efficientnet_lite4": 1280,
               "efficientnetv2_b0": 1280, "efficientnetv2_b1": 1280, "efficientnetv2_b2": 1408,
               "efficientnetv2_b3": 1536, "efficientnetv2_s": 1280, "efficientnetv2_m": 1280,
               "efficientnetv2_l": 1280, "efficientnetv2_xl": 1280}


@pytest.fixture(autouse=True)
def _fresh_keras_session():
  yield
  keras.backend.clear_session()


def _size(name: str) -> int:
  return 32 if name.startswith("efficientnet") else 64


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_has_its_papers_top(name: str) -> None:
  """No build: the top's width (EfficientNet's top conv) and dropout that the classifier
  builds for `name`; the pooled Inception/Xception tops have no top conv."""
  spec = HEAD_SPECS[name]
  assert spec.top_filters == TOP_FILTERS.get(name)
  assert spec.efficientnet_init == name.startswith("efficientnet")
  assert spec.dropout == DROPOUT[name]


@pytest.mark.parametrize("name", [n for n in COUNTS if n != "efficientnetv2_b0"])
def test_parameter_count_and_dropout_of_one_backbone_per_family(name: str) -> None:
  model = classifier(BACKBONES[name], aux_heads=False, image_size=_size(name))
  count = model.inference_model.count_params()
  assert count == COUNTS[name]
  assert count == model.count_params()  # no aux heads: nothing outside the inference model
  assert model.inference_model.get_layer("top_dropout").rate == DROPOUT[name]
  assert sorted(model.backbone.output) == ["2", "3", "4", "5"]  # the detection contract


def test_unknown_backbone_lists_the_registered_ones() -> None:
  with pytest.raises(ValueError, match="Registered backbones: efficientnet_b0,.*xception"):
    classifier("resnet50")


def test_dropout_rate_overrides_the_paper_default() -> None:
  model = classifier("efficientnet_b0", num_classes=7, dropout_rate=0.35, image_size=32)
  assert model.inference_model.get_layer("top_dropout").rate == 0.35
  assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 7)


def test_scheduled_dropout_classifier_takes_any_size_with_the_same_weights() -> None:
  """Progressive learning's classifier (scheduled_dropout, image_size None): keras apps'
  1000-class V2-B0 count, its dropout a ScheduledDropout at the variant's 0.2."""
  from detlab.layers.scheduled_dropout import ScheduledDropout
  model = classifier("efficientnetv2_b0", scheduled_dropout=True)
  assert model.inference_model.count_params() == COUNTS["efficientnetv2_b0"]
  layer = model.inference_model.get_layer("top_dropout")
  assert isinstance(layer, ScheduledDropout) and layer.rate == 0.2
  for size in (32, 40):
    assert model(np.zeros((1, size, size, 3), np.float32)).shape == (1, 1000)


def test_googlenet_aux_heads_train_only_with_the_papers_shape() -> None:
  """Aux on 4a and 4d: 5x5/3 pool -> 1x1 conv 128 -> FC 1024 -> dropout 0.7 -> FC; 0.3."""
  model = classifier("inception_v1", num_classes=10, image_size=224)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  train = model(images, training=True)
  assert sorted(train) == ["aux_logits_4a", "aux_logits_4d", "logits"]
  assert all(v.shape == (2, 10) for v in train.values())
  assert model.aux_loss_weights == {"aux_logits_4a": 0.3, "aux_logits_4d": 0.3}
  infer = model(images)
  assert isinstance(infer, tf.Tensor) and infer.shape == (2, 10)
  # Inference and the training graph's main logits agree when dropout is off.
  np.testing.assert_allclose(infer.numpy(), model.training_model(images)["logits"].numpy(),
                             rtol=1e-5, atol=1e-5)
  assert model.training_model.get_layer("aux_4a_dropout").rate == 0.7
  assert model.training_model.get_layer("aux_4d_conv").filters == 128
  assert model.training_model.get_layer("aux_4d_fc").units == 1024
  # 4x4x128 -> 1024 at 224: the aux heads' size of the backbone tests (512/528 input channels).
  head = lambda c: (c * 128 + 128) + (4 * 4 * 128 * 1024 + 1024) + (1024 * 10 + 10)
  assert model.count_params() - model.inference_model.count_params() == head(512) + head(528)


def test_inception_v3_aux_head_has_bn_and_weight_0_4() -> None:
  model = classifier("inception_v3", num_classes=5, image_size=96)
  assert model.aux_loss_weights == {"aux_logits": 0.4}
  assert isinstance(model.training_model.get_layer("aux_proj_bn"),
                    keras.layers.BatchNormalization)
  out = model(np.zeros((1, 96, 96, 3), np.float32), training=True)
  assert sorted(out) == ["aux_logits", "logits"]


def test_aux_heads_without_a_static_size_say_how_to_fix() -> None:
  with pytest.raises(ValueError, match="image_size"):
    classifier("inception_v3")


@pytest.mark.parametrize("detector_drop_connect", [None, 0.0])
def test_detector_backbone_initialises_from_a_classifier_checkpoint(tmp_path,
                                                                    detector_drop_connect):
  """0.0: the detector's backbone has no stochastic-depth Dropout layers (the shapes demo,
  google/automl's detector B0) while the classifier's has them, so the two functional
  models differ in their weightless layers; every backbone variable must still load."""
  keras.utils.set_random_seed(1)
  source = classifier("efficientnet_b0", num_classes=4, image_size=64)
  path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
  keras.utils.set_random_seed(2)
  backbone_fn = BACKBONES["efficientnet_b0"]
  if detector_drop_connect is not None:
    backbone_fn = functools.partial(backbone_fn, drop_connect_rate=detector_drop_connect)
    assert len(backbone_fn(input_shape=(64, 64, 3)).layers) < len(source.backbone.layers)
  detector = efficientdet(backbone_fn, num_classes=3, image_size=128,
                          fpn_cells=1, head_repeats=1)
  table = initialize_from_checkpoint(detector, path, "backbone")
  assert table["backbone"]["new"] == table["backbone"]["skipped"] == 0
  assert len(detector.backbone.variables) == len(source.backbone.variables) > 0
  for a, b in zip(source.backbone.variables, detector.backbone.variables):
    assert a.name == b.name and np.array_equal(a.numpy(), b.numpy()), a.name


def test_gin_wires_a_backbone_reference_into_the_classifier() -> None:
  import gin
  import detlab.registry  # noqa: F401  (registers the builders)
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config(["classifier.backbone_fn = @efficientnet_b0",
                      "classifier.num_classes = 3", "classifier.image_size = 32"])
    try:
      model = gin.get_configurable("detlab.models.classifier")()
    finally:
      gin.clear_config()
  assert model.name == "efficientnet_b0_classifier"
  assert model(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 3)
