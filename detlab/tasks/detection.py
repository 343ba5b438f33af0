"""The detection task: an EfficientDet-style model, its inputs, loss, per-replica prediction
(network + NMS, boxes mapped to original pixels) and its COCO evaluator.

Built from gin (`train.task = @DetectionTask()`, binding model_fn, train_input, eval_input,
loss, postprocess_config, ...; the model then built by `build_model()` inside the strategy),
or around a model built elsewhere (`DetectionTask(loss, postprocess_config)`: detlab.api, the
benchmark), whose methods take the model as an argument: a task holds no model, so one task
serves any number of models (a folded copy, another checkpoint) without stale traces.
"""
from typing import Callable

import gin
import tensorflow as tf

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.category_ids import check_category_ids
from detlab.data.detection_input import InputConfig, make_dataset
from detlab.data.label_map import category_names
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig, image_windows, postprocess
from detlab.evaluation.coco_evaluator import format_metrics
from detlab.evaluation.detection import DetectionEvaluator
from detlab.tasks.base import Task, set_bn_momentum


def to_original_pixels(boxes: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
  """[B, D, 4] yxyx boxes in model-input pixels -> each image's original pixels: the eval
  parser's offset undone, divided by its scale, clipped to the original image."""
  info = tf.cast(image_info, tf.float32)
  scale, offset = tf.tile(info[:, 2:3], [1, 1, 2]), tf.tile(info[:, 3:4], [1, 1, 2])
  limit = tf.tile(info[:, 0:1], [1, 1, 2])
  return tf.clip_by_value((boxes + offset) / scale, 0.0, limit)


def per_class_line(title: str, values: dict) -> str:
  """'<title>: name 0.123, other n/a, ...' for {class name: AP or None}."""
  return f"{title}: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                                  for k, v in values.items())


@gin.register(module="detlab.tasks")
class DetectionTask(Task):
  """Glue between an EfficientDet-style model, its loss and post-processing."""

  name = "detection"
  loss_parts = ("class", "box")
  primary_metric = "AP"
  summary_prefix = "coco"
  png_name = "eval_detections.png"
  summary_image = "detections"  # ground truth green, predictions red, as in the PNG
  predict_features = ("images", "image_info")
  settings = ("label_map_file", "annotation_file", "coco_backend")
  example_gin = "efficientdet_d0.gin"

  def __init__(self, loss: DetectionLoss | None = None,
               postprocess_config: PostprocessConfig | None = None, *,
               model_fn: Callable | None = None, train_input: InputConfig | None = None,
               eval_input: InputConfig | None = None, label_map_file: str | None = None,
               annotation_file: str | None = None, coco_backend: str | None = None,
               bn_momentum: float | None = None, score_threshold: float = 0.3):
    """model_fn: the detector builder (build_model()), e.g. @efficientdet.
    label_map_file / annotation_file: category names and the COCO ground truth (see
    README); the label map also bounds the category ids checked before training (also
    given as train.label_map_file / train.annotation_file).
    coco_backend: 'faster' (faster-coco-eval, the default when installed) or 'pycocotools'
    (the reference); the same numbers either way (tests/evaluation/test_coco_backends.py).
    bn_momentum: overrides every BN layer's momentum in build_model (tasks.base.
    set_bn_momentum; None: the model's). score_threshold: predictions drawn in the PNG."""
    if loss is not None and not isinstance(loss, DetectionLoss):
      raise TypeError("DetectionTask's first argument is the loss (a DetectionLoss); the task "
                      "holds no model: pass the model to predict/compute_loss instead.")
    self.loss = loss or DetectionLoss()
    self.postprocess_config = postprocess_config or PostprocessConfig()
    self.model_fn, self.train_input, self.eval_input = model_fn, train_input, eval_input
    self.label_map_file, self.annotation_file = label_map_file, annotation_file
    self.coco_backend, self.bn_momentum = coco_backend, bn_momentum
    self.score_threshold = score_threshold

  def build_model(self):
    if self.model_fn is None:
      raise ValueError("DetectionTask.model_fn is not set; bind it, e.g. "
                       "DetectionTask.model_fn = @efficientdet (see efficientdet_d0.gin).")
    model = self.model_fn()
    set_bn_momentum(model, self.bn_momentum)
    return model

  def describe(self, model) -> str:
    return (f"Model {model.name}: {model.count_params():,} parameters, "
            f"{model.anchors.num_anchors} anchors")

  def preflight(self, model) -> None:
    check_category_ids(model.num_classes, self.label_map_file, self.train_input,
                       self.eval_input)

  def _dataset(self, config, model, batch, context=None, seed=None):
    return make_dataset(config, model.anchors, model.num_classes, batch, context, seed=seed,
                        convention=input_convention(model, default=IMAGENET_MEAN_STD))

  def train_dataset(self, model, input_context, per_replica_batch, seed, start_step=0):
    del start_step  # the stream does not change with the step
    return self._dataset(self.input_config(True), model, per_replica_batch, input_context,
                         seed)

  def eval_dataset(self, model, batch_size):
    return self._dataset(self.input_config(False), model, batch_size)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    class_outputs, box_outputs = model(batch["images"], training=training)
    return self.loss_of(model, class_outputs, box_outputs, batch)

  def loss_of(self, model, class_outputs, box_outputs, batch: dict) -> dict:
    """The detection loss of the network's per-level outputs against the batch's targets."""
    cls, box = model.flatten_outputs(class_outputs, box_outputs)
    return self.loss(cls, box, batch["cls_targets"], batch["box_targets"])

  def detections(self, model, class_outputs, box_outputs, windows=None) -> dict:
    """Post-processed detections of the network's outputs, in model-input pixels
    ([y1, x1, y2, x2]), classes 0-based; windows [B, 4]: each image's clip window
    (postprocess.image_windows), None for the whole input."""
    cls, box = model.flatten_outputs(class_outputs, box_outputs)
    return postprocess(cls, box, model.anchors.boxes(), model.anchors.image_size,
                       self.postprocess_config, windows)

  def detect(self, model, images: tf.Tensor, windows=None) -> dict:
    """`detections` of `model` on model-input images (pure TF; wrap in a tf.function)."""
    class_outputs, box_outputs = model(images, training=False)
    return self.detections(model, class_outputs, box_outputs, windows)

  def predict(self, model, features: dict) -> dict:
    """Detections with boxes in each image's original pixels (÷ scale, clipped); boxes that
    lie wholly in the pad (or outside the image) are dropped before NMS."""
    windows = image_windows(features["image_info"], model.anchors.image_size)
    detections = self.detect(model, features["images"], windows)
    detections["boxes"] = to_original_pixels(detections["boxes"], features["image_info"])
    return detections

  def evaluator(self, model, kind=DetectionEvaluator):
    """A `kind` (DetectionEvaluator or a subclass taking its arguments) for `model`."""
    return kind(
        category_names(self.label_map_file, self.annotation_file, model.num_classes),
        self.annotation_file, self.coco_backend,
        input_convention(model, default=IMAGENET_MEAN_STD),
        score_threshold=self.score_threshold)

  def format_metrics(self, metrics, extra):
    return (format_metrics(metrics, self.postprocess_config.nms_mode) + "\n" +
            per_class_line("Per-class AP", extra.get("per_class_AP", {})))

  def metrics_record(self, metrics, extra):
    return {"metrics": metrics, **extra, "nms": self.postprocess_config.nms_mode}
