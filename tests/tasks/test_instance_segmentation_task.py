"""InstanceSegmentationTask: its gin files are the detector files plus the mask settings, its
mask loss is Mask R-CNN's per-pixel sigmoid cross-entropy over the real instances only, its
predict gives one box-relative mask per detection from one forward pass, and an input
without masks is refused naming the binding."""
import os
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import config
from detlab.training.setup import configured_task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "training"))
from tiny_backbone import tiny_test_backbone  # noqa: E402,F401  pylint: disable=wrong-import-position,import-error,unused-import

DETECTOR_BINDINGS = ("efficientdet.backbone_fn", "efficientdet.fpn_width",
                     "efficientdet.fpn_cells", "efficientdet.head_repeats",
                     "efficientdet.fusion", "efficientdet.anchor_scale", "%IMAGE_SIZE",
                     "DetectionLoss.box_loss_weight", "PostprocessConfig.nms_mode")


def _parsed(files, bindings=()):
  gin.clear_config()
  config.parse_gin(list(files), list(bindings))
  return {name: gin.query_parameter(name) for name in DETECTOR_BINDINGS}


@pytest.mark.parametrize("dk", ["d0", "d3", "d7x"])
def test_instance_gin_files_are_the_detector_files_plus_masks(dk):
  try:
    want = _parsed([f"efficientdet_{dk}.gin"])
    got = _parsed([f"instance_segmentation_{dk}.gin"])
    task = configured_task()
    assert got == want
    assert type(task).__name__ == "InstanceSegmentationTask"
    assert task.input_config(True).instance_masks.size == 28
    assert task.input_config(False).instance_masks is not None
  finally:
    gin.clear_config()


TINY = ["efficientdet.backbone_fn = @tiny_test_backbone", "efficientdet.fpn_width = 16",
        "efficientdet.fpn_cells = 1", "efficientdet.head_repeats = 1", "IMAGE_SIZE = 64",
        "efficientdet.max_level = 5", "train/InstanceMaskConfig.box_jitter = 0.0",
        "InstanceSegmentationTask.mask_repeats = 1", "InstanceSegmentationTask.masks_per_image = 4",
        "train/InputConfig.shuffle_buffer = 4"]


@pytest.fixture(scope="module")
def task_and_model(shapes_dir):
  gin.clear_config()
  config.parse_gin(["instance_segmentation_d0_shapes.gin"], TINY + [
      f"TRAIN_FILE_PATTERN = '{shapes_dir}/train-*'",
      f"EVAL_FILE_PATTERN = '{shapes_dir}/val-*'"])
  try:
    task = configured_task()
    keras.utils.set_random_seed(5)
    model = task.build_model()
  finally:
    gin.clear_config()
  return task, model


def _bce(logits, targets):
  return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def test_the_mask_loss_is_the_pixel_cross_entropy_of_the_real_instances(task_and_model):
  task, model = task_and_model
  batch = next(iter(task.train_dataset(model, None, 2, seed=3)))
  classes = batch["mask_classes"][:, :4].numpy()
  assert (classes >= 0).any() and (classes < 0).any()  # real rows and padding
  losses = task.compute_loss(model, batch, training=False)
  _, _, features = model(batch["images"], training=False)
  logits = model.mask_logits(features, batch["mask_boxes"][:, :4],
                             tf.maximum(batch["mask_classes"][:, :4], 0)).numpy()
  real = classes >= 0
  pixels = _bce(logits, batch["mask_targets"][:, :4].numpy())[real]
  # MaskrcnnLoss: the sum over the real rows' pixels / (their pixel count + 0.01).
  np.testing.assert_allclose(float(losses["mask"]), pixels.sum() / (pixels.size + 0.01),
                             rtol=1e-5)
  assert float(losses["total"]) == pytest.approx(
      float(losses["class"]) + 50.0 * float(losses["box"]) + float(losses["mask"]), rel=1e-5)
  # What a padding row holds does not count.
  noisy = dict(batch, mask_targets=tf.where(batch["mask_classes"][:, :, None, None] < 0,
                                            1.0, batch["mask_targets"]))
  assert float(task.compute_loss(model, noisy, training=False)["mask"]) == pytest.approx(
      float(losses["mask"]), rel=1e-6)


def test_predict_masks_every_detection_at_its_box(task_and_model):
  task, model = task_and_model
  batch = next(iter(task.eval_dataset(model, 2)))
  outputs = task.predict(model, {k: batch[k] for k in task.predict_features})
  masks = outputs["masks"].numpy()
  assert masks.shape == (2, 100, 28, 28)
  assert (masks >= 0).all() and (masks <= 1).all()
  # The mask of detection j is the branch's at detection j's box (model-input pixels).
  class_outputs, box_outputs, features = model(batch["images"], training=False)
  from detlab.detection.postprocess import image_windows  # pylint: disable=import-outside-toplevel
  detections = task.detection.detections(
      model, class_outputs, box_outputs, image_windows(batch["image_info"], 64))
  want = tf.sigmoid(model.mask_logits(features, detections["boxes"][:, :3],
                                      detections["classes"][:, :3])).numpy()
  np.testing.assert_allclose(masks[:, :3], want, atol=1e-5)


def test_an_input_without_masks_is_refused_naming_the_binding(shapes_dir):
  gin.clear_config()
  try:
    config.parse_gin(["instance_segmentation_d0_shapes.gin"],
                     TINY + ["train/InputConfig.instance_masks = None"])
    task = configured_task()
    with pytest.raises(ValueError, match=r"train/InputConfig.instance_masks = "
                                         r"@InstanceMaskConfig\(\)"):
      task.build_model()
  finally:
    gin.clear_config()
