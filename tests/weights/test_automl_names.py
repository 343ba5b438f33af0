"""The automl name mapping is general: the reference's naming rules (google/automl
efficientdet_keras.py, efficientnet_model.py) for fast and sum fusion and for P3-P8 (D7x), a
strict load that lists what does not map, and Dk identification that agrees with the gin files."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from automl_bundle import bundle_tensors, write_bundle
from detlab import config
from detlab.backbones.efficientnet import efficientnet_b0
from detlab.models.efficientdet import efficientdet
from detlab.weights.automl_checkpoint import (REFERENCE_MODELS, Architecture,
                                              AutomlCheckpointError,
                                              describe_checkpoint, describe_model,
                                              guess_models, is_automl_checkpoint,
                                              load_automl_checkpoint)
from detlab.weights.automl_names import automl_names


def small(**kwargs):
  """EfficientNet-B0 under a narrow BiFPN/head: the real layer types, built in seconds."""
  args = dict(num_classes=3, image_size=128, fpn_width=16, fpn_cells=2, head_repeats=2)
  return efficientdet(efficientnet_b0, **{**args, **kwargs})


@pytest.fixture(scope="module")
def fast_model():
  return small()


def _names(model) -> dict:
  return {n: e.variable for e in automl_names(model) for n in e.names}


def test_fast_fusion_names_follow_the_reference(fast_model):
  names = _names(fast_model)
  assert len(names) == sum(len(e.names) for e in automl_names(fast_model))  # all unique
  # 7 stages of B0 -> 16 blocks numbered globally; block 0 has no expansion conv.
  assert "efficientnet-b0/blocks_15/conv2d_1/kernel" in names
  assert "efficientnet-b0/blocks_0/tpu_batch_normalization_1/moving_mean" in names
  assert "efficientnet-b0/blocks_0/conv2d_1/kernel" not in names
  assert names["efficientnet-b0/blocks_0/conv2d/kernel"].shape == [1, 1, 32, 16]  # project
  assert names["efficientnet-b0/blocks_1/conv2d/kernel"].shape == [1, 1, 16, 96]  # expand
  # P3-P7: fnode n is node 5 + n; P4-out (fnode4) fuses nodes 1, 7, 8 with three WSM scalars.
  assert "fpn_cells/cell_0/fnode4/WSM_2" in names
  assert names["fpn_cells/cell_0/fnode4/resample_0_1_9/conv2d/kernel"].shape == [1, 1, 112, 16]
  assert "fpn_cells/cell_1/fnode7/op_after_combine12/conv/pointwise_kernel" in names
  assert not any(n.startswith("fpn_cells/cell_1/") and "/resample_" in n for n in names)
  assert "resample_p6/conv2d/kernel" in names and not any("resample_p7" in n for n in names)
  assert "class_net/class-1-bn-7/moving_variance" in names
  assert names["box_net/box-predict/bias"].shape == [36]


def test_sum_fusion_and_levels_3_to_8_as_d7x():
  model = small(fusion="sum", max_level=8, image_size=256, fpn_cells=1, head_repeats=1)
  names = _names(model)
  assert not any("WSM" in n for n in names)
  assert "fpn_cells/cell_0/fnode0/op_after_combine6/conv/bias" in names  # 6 inputs: ids 0-5
  assert "fpn_cells/cell_0/fnode9/op_after_combine15/bn/gamma" in names  # 5 + 5 nodes
  assert "class_net/class-0-bn-8/gamma" in names
  assert not any(n.startswith(("resample_p7", "resample_p8")) for n in names)
  arch = describe_checkpoint({n: v.shape.as_list() for n, v in names.items()})
  assert arch == describe_model(model) and (arch.fusion, arch.max_level) == ("sum", 8)


def test_strict_load_round_trip_and_what_does_not_map(fast_model, tmp_path):
  tensors = bundle_tensors(fast_model, ema_offset=0.5)
  prefix = write_bundle(tensors, str(tmp_path / "ok" / "model"))
  assert is_automl_checkpoint(str(tmp_path / "ok"))
  target = small()
  report = load_automl_checkpoint(target, str(tmp_path / "ok"), use_ema=True)
  assert report["variables"] == report["from_ema"] == len(target.variables)
  for a, b in zip(fast_model.variables, target.variables):
    np.testing.assert_allclose(a.numpy() + 0.5, b.numpy(), rtol=0, atol=1e-6)
  load_automl_checkpoint(target, prefix, use_ema=False)
  for a, b in zip(fast_model.variables, target.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())

  extra = dict(tensors, **{"box_net/box-9/bias": np.zeros([16], np.float32)})
  del extra["class_net/class-1-bn-4/beta"]
  write_bundle(extra, str(tmp_path / "bad" / "model"))
  with pytest.raises(AutomlCheckpointError) as error:
    load_automl_checkpoint(target, str(tmp_path / "bad"))
  assert "box_net/box-9/bias (in the checkpoint, mapped to no variable)" in str(error.value)
  assert "class_net/class-1-bn-4/beta (not in checkpoint)" in str(error.value)


def test_other_classes_or_architecture_is_an_error_that_says_what_fits(fast_model, tmp_path):
  write_bundle(bundle_tensors(fast_model), str(tmp_path / "model"))
  with pytest.raises(AutomlCheckpointError, match="has 3 classes.*NUM_CLASSES = 3"):
    load_automl_checkpoint(small(num_classes=5), str(tmp_path))
  with pytest.raises(AutomlCheckpointError, match="looks like no reference EfficientDet"):
    load_automl_checkpoint(small(fpn_width=24), str(tmp_path))


@pytest.mark.parametrize("dk", sorted(REFERENCE_MODELS))
def test_the_identification_table_agrees_with_the_gin_files(dk):
  gin.clear_config()
  try:
    config.parse_gin([f"efficientdet_{dk}.gin"], [])
    q = gin.query_parameter
    row = (q("efficientdet.backbone_fn").selector.replace("efficientnet_", "efficientnet-"),
           q("efficientdet.fpn_width"), q("efficientdet.fpn_cells"),
           q("efficientdet.head_repeats"), q("efficientdet.max_level"), q("efficientdet.fusion"))
  finally:
    gin.clear_config()
  assert REFERENCE_MODELS[dk] == row
  found = guess_models(describe_checkpoint_like(row))
  assert dk in found and (len(found) == 1 or set(found) == {"d6", "d7"})


def describe_checkpoint_like(row) -> Architecture:
  backbone, width, cells, repeats, max_level, fusion = row
  return Architecture(backbone, width, cells, repeats, 3, max_level, fusion, 90)


# Variables of the reference EfficientDets (google/automl tf2 EfficientDetNet, 90 classes,
# counted by building the reference code under TF 2.20 + tf_keras): the mapping gives each
# Dk exactly as many names. D6 and D7 share their weights' shapes.
REFERENCE_VARIABLE_COUNTS = {"d0": 709, "d1": 912, "d3": 1165, "d5": 1482, "d6": 1565,
                             "d7": 1565, "d7x": 1902}


@pytest.mark.parametrize("dk", [
    "d0", "d1", "d3", *[pytest.param(d, marks=pytest.mark.slow) for d in ("d5", "d6", "d7x")]])
def test_every_dk_maps_to_the_reference_variable_count(dk):
  gin.clear_config()
  try:
    config.parse_gin([f"efficientdet_{dk}.gin"], ["IMAGE_SIZE = 256"])
    model = gin.query_parameter("DetectionTask.model_fn").scoped_configurable_fn()
  finally:
    gin.clear_config()
  names = _names(model)
  assert len(names) == REFERENCE_VARIABLE_COUNTS[dk]
  arch = describe_checkpoint({n: v.shape.as_list() for n, v in names.items()})
  assert dk in guess_models(arch)
