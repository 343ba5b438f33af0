"""Instance segmentation: a detlab detector plus a mask branch (models/instance_segmentation),
trained and evaluated through the one root (`train.task = @InstanceSegmentationTask()`).

The detection half is a whole DetectionTask (`InstanceSegmentationTask.detection =
@DetectionTask()`), so every detector gin file's `DetectionTask.*` bindings (model_fn,
inputs, loss, post-processing) apply unchanged: instance_segmentation_dN.gin is
efficientdet_dN.gin plus the mask settings. Training: the detection loss plus a per-pixel
sigmoid cross-entropy of the mask logits at the input's (jittered) ground-truth boxes
(Mask R-CNN's mask loss, the Model Garden's `MaskrcnnLoss`); inference: the masks at the
final detections, as box-relative probabilities (the OD API's `detection_masks`).
"""
import gin
import tensorflow as tf
from official.vision.losses.maskrcnn_losses import MaskrcnnLoss

from detlab.detection.postprocess import image_windows
from detlab.evaluation.instance_segmentation import (InstanceSegmentationEvaluator,
                                                     format_metrics)
from detlab.models.instance_segmentation import mask_probabilities, with_mask_head
from detlab.tasks.base import Task, set_bn_momentum
from detlab.tasks.detection import DetectionTask, per_class_line, to_original_pixels


@gin.register(module="detlab.tasks")
class InstanceSegmentationTask(Task):
  """DetectionTask + an instance-mask branch on the same BiFPN."""

  name = "instance_segmentation"
  loss_parts = ("class", "box", "mask")
  summary_prefix = "coco"
  png_name = "eval_instance_masks.png"
  summary_image = "instance_masks"
  predict_features = DetectionTask.predict_features
  settings = DetectionTask.settings
  example_gin = "instance_segmentation_d0.gin"

  def __init__(self, detection: DetectionTask | None = None, mask_loss_weight: float = 1.0,
               mask_width: int | None = None, mask_repeats: int = 4,
               class_agnostic: bool = True, masks_per_image: int = 32,
               primary_metric: str = "mask_AP", bn_momentum: float | None = None,
               mask_upsample: str = "transposed"):
    """detection: the DetectionTask (model_fn, inputs with `InputConfig.instance_masks =
    @InstanceMaskConfig()`, loss, post-processing). mask_loss_weight: total = detection
    total + mask_loss_weight x mask loss. mask_width (None: the BiFPN width), mask_repeats,
    class_agnostic: the mask head (heads/mask.py); its mask size is the input's
    InstanceMaskConfig.size. masks_per_image: at most this many ground-truth instances per
    image train the mask branch in a step (the first ones the input keeps; the input lists
    them in their record's order, most images have fewer). primary_metric: what best/
    keeps (mask_AP or AP). bn_momentum: every BN layer's momentum, the mask head's too
    (None: the detection task's, else the model's). mask_upsample: how the head's M/2
    grid becomes M x M masks (MaskHead.upsample): "transposed" (Mask R-CNN's 2x2
    transposed conv, BN, swish, then the predictor at M x M) or "bilinear" (the predictor
    at M/2, its logits resized bilinearly)."""
    if mask_loss_weight < 0:
      raise ValueError(f"InstanceSegmentationTask.mask_loss_weight must be >= 0, got "
                       f"{mask_loss_weight}.")
    if masks_per_image < 1:
      raise ValueError(f"InstanceSegmentationTask.masks_per_image must be >= 1, got "
                       f"{masks_per_image}.")
    self.detection = detection or DetectionTask()
    self.mask_loss_weight, self.masks_per_image = float(mask_loss_weight), masks_per_image
    self.mask_width, self.mask_repeats = mask_width, mask_repeats
    self.class_agnostic, self.primary_metric = class_agnostic, primary_metric
    self.bn_momentum, self.mask_upsample = bn_momentum, mask_upsample
    self.mask_loss = MaskrcnnLoss()

  # The detector builder and the inputs are the detection task's.
  @property
  def model_fn(self):
    return self.detection.model_fn

  @property
  def train_input(self):
    return self.detection.train_input

  @property
  def eval_input(self):
    return self.detection.eval_input

  def input_config(self, training: bool):
    config = self.detection.input_config(training)
    if config.instance_masks is None:
      scope = "train" if training else "eval"
      raise ValueError(
          f"The instance segmentation task needs masks in its {scope} input: bind "
          f"`{scope}/InputConfig.instance_masks = @InstanceMaskConfig()` (as "
          f"{self.example_gin} does) over records written with masks.")
    return config

  def mask_size(self) -> int:
    return self.input_config(True).instance_masks.size

  def build_model(self):
    model = with_mask_head(self.detection.build_model(), self.mask_size(), self.mask_width,
                           self.mask_repeats, self.class_agnostic,
                           upsample=self.mask_upsample)
    set_bn_momentum(model, self.bn_momentum if self.bn_momentum is not None
                    else self.detection.bn_momentum)
    return model

  def describe(self, model) -> str:
    kind = "class-agnostic" if model.mask_head.class_agnostic else "per-class"
    return (self.detection.describe(model) + f", {model.mask_size}x{model.mask_size} "
            f"{kind} masks ({model.mask_head.count_params():,} parameters in the branch)")

  def use_settings(self, **settings) -> None:
    self.detection.use_settings(**settings)

  def preflight(self, model) -> None:
    for training in (True, False):
      self.input_config(training)
    self.detection.preflight(model)

  def train_dataset(self, model, input_context, per_replica_batch, seed, start_step=0):
    self.input_config(True)
    return self.detection.train_dataset(model, input_context, per_replica_batch, seed,
                                        start_step)

  def eval_dataset(self, model, batch_size):
    self.input_config(False)
    return self.detection.eval_dataset(model, batch_size)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    """One forward pass: the detection loss, and the mask loss at the batch's mask_boxes
    (the first masks_per_image rows; padding rows, class -1, weigh nothing)."""
    class_outputs, box_outputs, features = model(batch["images"], training=training)
    losses = self.detection.loss_of(model, class_outputs, box_outputs, batch)
    count = self.masks_per_image
    classes = batch["mask_classes"][:, :count]
    logits = model.mask_logits(features, batch["mask_boxes"][:, :count],
                               tf.maximum(classes, 0), training=training)
    # MaskrcnnLoss counts a row whose class is > 0 (its classes are 1-based), normalises by
    # the global number of such pixels across replicas.
    mask = self.mask_loss(tf.cast(logits, tf.float32),
                          tf.cast(batch["mask_targets"][:, :count], tf.float32), classes + 1)
    total = losses["total"] + self.mask_loss_weight * mask
    return {"total": total, "class": losses["class"], "box": losses["box"], "mask": mask}

  def predict(self, model, features: dict) -> dict:
    """DetectionTask.predict's detections (boxes in original pixels) plus "masks" [B, D, M,
    M]: mask probabilities relative to each box, from one forward pass."""
    class_outputs, box_outputs, pyramid = model(features["images"], training=False)
    windows = image_windows(features["image_info"], model.anchors.image_size)
    detections = self.detection.detections(model, class_outputs, box_outputs, windows)
    detections["masks"] = mask_probabilities(model, pyramid, detections["boxes"],
                                             detections["classes"])
    detections["boxes"] = to_original_pixels(detections["boxes"], features["image_info"])
    return detections

  def evaluator(self, model):
    return self.detection.evaluator(model, InstanceSegmentationEvaluator)

  def format_metrics(self, metrics, extra):
    return "\n".join([
        format_metrics(metrics, self.detection.postprocess_config.nms_mode),
        per_class_line("Per-class box AP", extra.get("per_class_AP", {})),
        per_class_line("Per-class mask AP", extra.get("per_class_mask_AP", {}))])

  def metrics_record(self, metrics, extra):
    return {"metrics": metrics, **extra, "nms": self.detection.postprocess_config.nms_mode}
