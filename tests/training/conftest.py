"""Tiny detectors and a gin-configured in-process `train()` for the training tests."""
import gin
import pytest
import tf_keras as keras

from tiny_backbone import tiny_bindings, tiny_test_backbone  # registers it with gin


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
