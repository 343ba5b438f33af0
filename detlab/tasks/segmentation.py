"""Semantic segmentation task for the shared training root (`train.task = @SegmentationTask()`):
the EfficientDet paper's segmenter, its inputs, the per-pixel loss, and mIoU at each image's
original resolution with the overlay PNG (detlab/evaluation/segmentation.py)."""
import os
from typing import Callable

import gin
import numpy as np
import tensorflow as tf

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.segmentation_input import SegmentationInputConfig, make_dataset
from detlab.evaluation.segmentation import (SegmentationEvaluator, draw_segmentation_panels,
                                            original_size_predictions)
from detlab.segmentation.loss import SegmentationLoss
from detlab.tasks.base import Task, set_bn_momentum


def original_images(images: np.ndarray, image_info: np.ndarray, convention) -> list:
  """Model-input images (normalised, resized, padded) -> uint8 images at original size."""
  mean, std = np.array(convention.mean, np.float32), np.array(convention.std, np.float32)
  out = []
  for image, info in zip(images, image_info):
    (h, w), (rh, rw) = info[0], info[1]
    pixels = np.clip(image[:int(np.ceil(rh)), :int(np.ceil(rw))] * std + mean, 0, 255)
    resized = tf.image.resize(pixels[None], [int(h), int(w)], method="bilinear")[0]
    out.append(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))
  return out


@gin.register(module="detlab.tasks")
class SegmentationTask(Task):
  """Glue between a segmenter (logits [B, S, S, K]), its inputs, loss and evaluator."""

  name = "segmentation"
  loss_parts = ()
  primary_metric = "mIoU"
  summary_prefix = "segmentation"
  png_name = "eval_segmentation.png"
  summary_image = "segmentation"

  def __init__(self, model_fn: Callable = gin.REQUIRED,
               train_input: SegmentationInputConfig | None = None,
               eval_input: SegmentationInputConfig | None = None,
               loss: SegmentationLoss = SegmentationLoss(),
               class_names: list[str] | None = None, num_visualize: int = 4,
               bn_momentum: float | None = None):
    """model_fn: the segmenter builder (@segmenter, bound in segmentation_common.gin).
    class_names: names by class id for the PNG legend (0 = background). bn_momentum:
    overrides every BN layer's momentum for training (set_bn_momentum; None: the model's)."""
    self.model_fn, self.train_input, self.eval_input = model_fn, train_input, eval_input
    self.loss, self.class_names, self.num_visualize = loss, class_names, num_visualize
    self.convention, self.bn_momentum = IMAGENET_MEAN_STD, bn_momentum

  def build_model(self):
    model = self.model_fn()
    set_bn_momentum(model, self.bn_momentum)
    self.convention = input_convention(model, default=IMAGENET_MEAN_STD)
    return model

  def _dataset(self, config, batch, context=None, seed=None, training=True):
    if config is None:
      which = "train_input" if training else "eval_input"
      raise ValueError(f"SegmentationTask.{which} is not set; bind it to "
                       f"@{'train' if training else 'eval'}/SegmentationInputConfig().")
    return make_dataset(config, batch, context, seed, self.convention)

  def train_dataset(self, model, input_context, per_replica_batch, seed):
    return self._dataset(self.train_input, per_replica_batch, input_context, seed)

  def eval_dataset(self, model, batch_size):
    return self._dataset(self.eval_input, batch_size, training=False)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    logits = model(batch["images"], training=training)
    return self.loss(logits, batch["labels"])

  def evaluate(self, model, dataset, out_dir, step, strategy=None, num_images=None):
    """({"mIoU", "pixel_accuracy", ...}, {"per_class_iou"}); the overlay PNG in out_dir."""
    run = SegmentationEvaluation(self, model)
    for batch in dataset:
      run.update(batch)
    return run.finish(out_dir)

  def format_metrics(self, metrics, extra):
    miou = metrics["mIoU"]
    return (f"mIoU {'n/a' if miou is None else f'{miou:.4f}'}, pixel accuracy "
            f"{metrics['pixel_accuracy']:.4f} ({metrics['num_images']} images); per-class IoU "
            + ", ".join("n/a" if v is None else f"{v:.3f}" for v in extra["per_class_iou"]))

  def metrics_record(self, metrics, extra):
    """metrics.json: mIoU, per_class_iou, pixel_accuracy at the top level (and under
    "metrics" as detection's file has them)."""
    return {**metrics, **extra, "metrics": metrics}


class SegmentationEvaluation:
  """One evaluation of a SegmentationTask, batch by batch (the joint task feeds it the batches
  its detection evaluation reads, so both share one pass over the eval set)."""

  def __init__(self, task: SegmentationTask, model):
    self.task, self.model = task, model
    self.evaluator = SegmentationEvaluator(model.num_classes, task.loss.ignore_label)
    self.predict = tf.function(lambda images: model(images, training=False))
    self.panels = None

  def update(self, batch: dict) -> None:
    logits = self.predict(batch["images"])
    labels, info = batch["original_labels"].numpy(), batch["image_info"].numpy()
    self.evaluator.update(logits, labels, info)
    if self.panels is None and self.task.num_visualize:
      n = self.task.num_visualize
      maps = original_size_predictions(logits[:n], info[:n])
      images = original_images(batch["images"].numpy()[:n], info[:n], self.task.convention)
      self.panels = (images, [labels[i, :m.shape[0], :m.shape[1]] for i, m in enumerate(maps)],
                     maps)

  def finish(self, out_dir: str) -> tuple[dict, dict]:
    result = self.evaluator.result()
    if self.panels is not None:
      draw_segmentation_panels(*self.panels, os.path.join(out_dir, self.task.png_name),
                               dict(enumerate(self.task.class_names or [])))
    per_class = result.pop("per_class_iou")
    return result, {"per_class_iou": per_class}
