"""Tiny detectors and a gin-configured in-process `train()` for the training tests."""
import gin
import pytest
import tf_keras as keras

from tiny_backbone import tiny_test_backbone  # registers it with gin


def tiny_bindings(shapes_dir: str, *extra: str) -> list[str]:
  """Gin bindings (on top of efficientdet_d0_shapes.gin) for a seconds-long deterministic run."""
  return [
      f"TRAIN_FILE_PATTERN='{shapes_dir}/train-*'", f"EVAL_FILE_PATTERN='{shapes_dir}/val-*'",
      f"train.label_map_file='{shapes_dir}/label_map.json'",
      f"train.annotation_file='{shapes_dir}/val_annotations.json'",
      "efficientdet.backbone_fn = @tiny_test_backbone", "efficientdet.fpn_width = 16",
      "efficientdet.fpn_cells = 1", "efficientdet.head_repeats = 1", "IMAGE_SIZE = 64",
      "efficientdet.max_level = 5",
      # Deterministic input: no random augmentation (stateful random ops in tf.data maps are
      # not part of the iterator checkpoint), seeded shuffles.
      "train/InputConfig.flip = False", "train/InputConfig.aug_scale_min = 1.0",
      "train/InputConfig.aug_scale_max = 1.0", "train/InputConfig.shuffle_buffer = 32",
      "train.seed = 1", "Schedule.batch_size = 2", "Schedule.train_steps = 6",
      "Schedule.steps_per_loop = 1", "Schedule.log_every_steps = 2",
      "Schedule.checkpoint_every_steps = 2", "train.num_eval_images = 8", *extra]


@pytest.fixture
def run_train(shapes_dir):
  """run_train(model_dir, mode, *bindings, **train_kwargs) -> train()'s results, in-process."""
  from detlab import config  # pylint: disable=import-outside-toplevel
  from detlab.training.experiment import train  # pylint: disable=import-outside-toplevel

  def run(model_dir, mode="train", *bindings, **kwargs):
    gin.clear_config()
    config.parse_gin(["efficientdet_d0_shapes.gin"], tiny_bindings(shapes_dir, *bindings))
    try:
      keras.backend.clear_session()
      return train(str(model_dir), mode, **kwargs)
    finally:
      gin.clear_config()
  return run


@pytest.fixture
def tiny_detector():
  """tiny_detector(num_classes=3, **efficientdet_kwargs) -> a 64-px, 3-level EfficientDet in ms."""
  from detlab.models.efficientdet import efficientdet  # pylint: disable=import-outside-toplevel

  def build(num_classes: int = 3, **kwargs):
    kwargs = {"image_size": 64, "max_level": 5, "fpn_width": 16, "fpn_cells": 1,
              "head_repeats": 1, **kwargs}
    return efficientdet(tiny_test_backbone, num_classes=num_classes, **kwargs)
  return build
