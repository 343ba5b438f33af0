"""The detection task: an EfficientDet-style model, its inputs, loss and prediction in
original pixels. COCO evaluation and drawing are in tasks/detection_eval.py.

Two ways to make one: `DetectionTask(model, loss, postprocess_config)` around a built model
(detlab.api, benchmark), or from gin (`train.task = @DetectionTask()`, binding model_fn,
train_input, eval_input, ...), the model then built by `build_model()` inside the strategy.
"""
import os
from typing import Callable

import gin
import numpy as np
import tensorflow as tf

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.category_ids import check_category_ids
from detlab.data.detection_input import InputConfig, make_dataset
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig, postprocess
from detlab.evaluation.coco_evaluator import format_metrics
from detlab.tasks.base import Task, set_bn_momentum
from detlab.tasks.detection_eval import evaluate_detections, load_category_names
from detlab.training.evaluation import replica_detect

__all__ = ["DetectionTask", "load_category_names"]


@gin.register(module="detlab.tasks")
class DetectionTask(Task):
  """Glue between an EfficientDet-style model, its loss and post-processing."""

  name = "detection"
  loss_parts = ("class", "box")
  primary_metric = "AP"
  summary_prefix = "coco"
  png_name = "eval_detections.png"
  summary_image = "detections"  # ground truth green, predictions red, as in the PNG

  def __init__(self, model=None, loss: DetectionLoss | None = None,
               postprocess_config: PostprocessConfig | None = None, *,
               model_fn: Callable | None = None, train_input: InputConfig | None = None,
               eval_input: InputConfig | None = None, label_map_file: str | None = None,
               annotation_file: str | None = None, coco_backend: str | None = None,
               bn_momentum: float | None = None):
    """model: a built detector, or None and `model_fn` (built by build_model()).
    label_map_file / annotation_file: category names and the COCO ground truth (see
    README); the label map also bounds the category ids checked before training.
    coco_backend: 'faster' (faster-coco-eval, the default when installed) or 'pycocotools'
    (the reference); the same numbers either way (tests/evaluation/test_coco_backends.py).
    bn_momentum: overrides every BN layer's momentum in build_model (tasks.base.
    set_bn_momentum; None: the model's)."""
    self.loss = loss or DetectionLoss()
    self.postprocess_config = postprocess_config or PostprocessConfig()
    self.model_fn, self.train_input, self.eval_input = model_fn, train_input, eval_input
    self.label_map_file, self.annotation_file = label_map_file, annotation_file
    self.coco_backend, self.bn_momentum = coco_backend, bn_momentum
    self.model = None
    self._detect_for = {}  # strategy -> its per-replica detect (one trace per strategy)
    if model is not None:
      self._bind(model)

  def _bind(self, model) -> None:
    self.model = model
    self.anchor_boxes = model.anchors.boxes()

  def build_model(self):
    if self.model_fn is None:
      raise ValueError("DetectionTask.model_fn is not set (train.model_fn in the legacy "
                       "gin files); bind it, e.g. to @efficientdet.")
    self._bind(self.model_fn())
    set_bn_momentum(self.model, self.bn_momentum)
    return self.model

  def describe(self, model) -> str:
    return (f"Model {model.name}: {model.count_params():,} parameters, "
            f"{model.anchors.num_anchors} anchors")

  def preflight(self, model) -> None:
    check_category_ids(model.num_classes, self.label_map_file, self.train_input,
                       self.eval_input)

  def _dataset(self, config, model, batch, context=None, seed=None):
    return make_dataset(config, model.anchors, model.num_classes, batch, context, seed=seed,
                        convention=input_convention(model, default=IMAGENET_MEAN_STD))

  def train_dataset(self, model, input_context, per_replica_batch, seed):
    if self.train_input is None:
      raise ValueError("train.train_input is not set; bind it in the gin file.")
    return self._dataset(self.train_input, model, per_replica_batch, input_context, seed)

  def eval_dataset(self, model, batch_size):
    if self.eval_input is None:
      raise ValueError("train.eval_input is not set; bind it in the gin file.")
    return self._dataset(self.eval_input, model, batch_size)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    class_outputs, box_outputs = model(batch["images"], training=training)
    cls, box = model.flatten_outputs(class_outputs, box_outputs)
    return self.loss(cls, box, batch["cls_targets"], batch["box_targets"])

  @tf.function
  def detect(self, images: tf.Tensor) -> dict:
    """Detections in model-input pixels ([y1, x1, y2, x2]), classes 0-based."""
    class_outputs, box_outputs = self.model(images, training=False)
    cls, box = self.model.flatten_outputs(class_outputs, box_outputs)
    return postprocess(cls, box, self.anchor_boxes, self.model.anchors.image_size,
                       self.postprocess_config)

  def detect_original_pixels(self, images: tf.Tensor, image_info: tf.Tensor,
                             detect=None) -> dict:
    """As `detect` (or the given `detect(images)`, e.g. one that runs per replica of a
    strategy), with boxes mapped back to the original image (÷ scale, clipped)."""
    detections = {k: v.numpy() for k, v in (detect or self.detect)(images).items()}
    info = image_info.numpy()
    scale = np.tile(info[:, 2, :], [1, 2])[:, None, :]
    offset = np.tile(info[:, 3, :], [1, 2])[:, None, :]
    limit = np.tile(info[:, 0, :], [1, 2])[:, None, :]
    boxes = (detections["boxes"] + offset) / scale
    detections["boxes"] = np.clip(boxes, 0.0, limit)
    return detections

  def evaluate(self, model, dataset, out_dir, step, strategy=None, num_images=None):
    """COCO metrics and {"per_class_AP"}; network + NMS run per replica of `strategy`."""
    if model is not self.model:
      self._bind(model)
    strategy = strategy or tf.distribute.get_strategy()
    if strategy not in self._detect_for:
      self._detect_for[strategy] = replica_detect(strategy, self.detect)
    detect = self._detect_for[strategy]
    names = load_category_names(self.label_map_file, self.annotation_file, model.num_classes)
    metrics, per_class = evaluate_detections(
        lambda images, info: self.detect_original_pixels(images, info, detect=detect),
        dataset, names, self.annotation_file, num_images,
        os.path.join(out_dir, self.png_name), backend=self.coco_backend,
        convention=input_convention(model, default=IMAGENET_MEAN_STD))
    return metrics, {"per_class_AP": per_class}

  def format_metrics(self, metrics, extra):
    per_class = extra.get("per_class_AP", {})
    return (format_metrics(metrics, self.postprocess_config.nms_mode) + "\nPer-class AP: " +
            ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                      for k, v in per_class.items()))

  def metrics_record(self, metrics, extra):
    return {"metrics": metrics, **extra, "nms": self.postprocess_config.nms_mode}
