"""Joint detection + semantic segmentation task (`train.task = @JointTask()`): one model whose
BiFPN feeds EfficientDet's class/box heads and the P2 segmentation head
(models/joint.py), trained on one loss = detection loss + `seg_loss_weight` x segmentation loss,
and evaluated with both metric sets: COCO AP (the detection evaluator) and mIoU / per-class
IoU / pixel accuracy at original resolution (the segmentation evaluator).

Composed of the single-task pieces, not copies: DetectionTask's loss, post-processing and
evaluator and SegmentationTask's loss and evaluator are used as they are; the input is
data/joint_input.py (DetectionParser + the mask under the same augmentation). `predict` runs
the network once per batch and returns both heads' outputs; each evaluator reads its own.
"""
from typing import Callable

import gin

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.joint_input import JointParser, check_joint_config, make_joint_dataset
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig, image_windows
from detlab.segmentation.loss import SegmentationLoss
from detlab.tasks.base import Task, set_bn_momentum
from detlab.evaluation.base import CombinedEvaluator
from detlab.tasks.detection import DetectionTask, to_original_pixels
from detlab.tasks.segmentation import SegmentationTask


@gin.register(module="detlab.tasks")
class JointTask(Task):
  """DetectionTask + SegmentationTask on one JointDetectorSegmenter."""

  name = "joint"
  loss_parts = ("detection", "segmentation", "class", "box")
  summary_prefix = "joint"
  png_name = "eval_joint.png"      # the two PNGs below, stacked (TensorBoard shows this one)
  summary_image = "joint"
  predict_features = DetectionTask.predict_features
  settings = DetectionTask.settings
  example_gin = "joint_d0.gin"

  def __init__(self, model_fn: Callable = gin.REQUIRED, train_input: InputConfig | None = None,
               eval_input: InputConfig | None = None, seg_loss_weight: float = 1.0,
               detection_loss: DetectionLoss | None = None,
               segmentation_loss: SegmentationLoss | None = None,
               postprocess_config: PostprocessConfig | None = None,
               label_map_file: str | None = None, annotation_file: str | None = None,
               coco_backend: str | None = None, class_names: list[str] | None = None,
               num_visualize: int = 4, primary_metric: str = "AP",
               bn_momentum: float | None = None):
    """model_fn: @joint_detector_segmenter. train_input / eval_input: detection InputConfigs
    over records that also hold semantic maps (flip + scale jitter + crop only).
    seg_loss_weight: total = detection total + seg_loss_weight x segmentation total.
    label_map_file / annotation_file / coco_backend: as DetectionTask's; class_names: the
    segmentation classes by id (0 = background), as SegmentationTask's. primary_metric: the
    metric best/ keeps (AP or mIoU). bn_momentum: every BN layer's momentum for training
    (tasks.base.set_bn_momentum; None: the model's)."""
    if seg_loss_weight < 0:
      raise ValueError(f"JointTask.seg_loss_weight must be >= 0, got {seg_loss_weight}.")
    for config in (train_input, eval_input):
      if config is not None:
        check_joint_config(config)
    self.model_fn, self.train_input, self.eval_input = model_fn, train_input, eval_input
    self.seg_loss_weight, self.primary_metric = float(seg_loss_weight), primary_metric
    self.bn_momentum = bn_momentum
    self.detection = DetectionTask(detection_loss, postprocess_config,
                                   label_map_file=label_map_file,
                                   annotation_file=annotation_file, coco_backend=coco_backend)
    self.segmentation = SegmentationTask(model_fn=None, loss=segmentation_loss or
                                         SegmentationLoss(), class_names=class_names,
                                         num_visualize=num_visualize)

  def build_model(self):
    model = self.model_fn()
    set_bn_momentum(model, self.bn_momentum)
    return model

  def describe(self, model) -> str:
    return (f"Model {model.name}: {model.count_params():,} parameters, "
            f"{model.anchors.num_anchors} anchors, {model.seg_head.num_classes} "
            f"segmentation classes")

  def use_settings(self, **settings) -> None:
    self.detection.use_settings(**settings)

  def preflight(self, model) -> None:
    self.detection.train_input, self.detection.eval_input = self.train_input, self.eval_input
    self.detection.preflight(model)

  def _dataset(self, config, model, batch, context=None, seed=None):
    parser = DetectionParser(config, model.anchors, model.num_classes,
                             input_convention(model, default=IMAGENET_MEAN_STD))
    return make_joint_dataset(JointParser(parser), batch, context, seed)

  # DetectionTask's, over this task's _dataset (the joint parser).
  train_dataset = DetectionTask.train_dataset
  eval_dataset = DetectionTask.eval_dataset

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    """One forward pass; the two single-task losses on its outputs, weighted."""
    class_outputs, box_outputs, logits = model(batch["images"], training=training)
    detection = self.detection.loss_of(model, class_outputs, box_outputs, batch)
    segmentation = self.segmentation.loss(logits, batch["labels"])
    total = detection["total"] + self.seg_loss_weight * segmentation["total"]
    return {"total": total, "detection": detection["total"],
            "segmentation": segmentation["total"], "class": detection["class"],
            "box": detection["box"]}

  def predict(self, model, features):
    """Both heads from one forward pass: the detections (original pixels, as
    DetectionTask.predict) and the segmentation "logits"."""
    class_outputs, box_outputs, logits = model(features["images"], training=False)
    outputs = self.detection.detections(
        model, class_outputs, box_outputs,
        image_windows(features["image_info"], model.anchors.image_size))
    outputs["boxes"] = to_original_pixels(outputs["boxes"], features["image_info"])
    outputs["logits"] = logits
    return outputs

  def evaluator(self, model):
    """DetectionTask's and SegmentationTask's evaluators over the same outputs; the joint
    PNG stacks their two pictures."""
    return CombinedEvaluator({
        self.detection.png_name: self.detection.evaluator(model),
        self.segmentation.png_name: self.segmentation.evaluator_for(
            model.seg_head.num_classes, input_convention(model, default=IMAGENET_MEAN_STD))})

  def format_metrics(self, metrics, extra):
    return (self.detection.format_metrics(metrics, extra) + "\n" +
            self.segmentation.format_metrics(metrics, extra))

  def metrics_record(self, metrics, extra):
    """metrics.json: the segmentation keys (mIoU, per_class_iou, pixel_accuracy) and the COCO
    numbers at the top level, all metrics under "metrics", per_class_AP, nms."""
    return {**metrics, **extra, "metrics": metrics,
            "nms": self.detection.postprocess_config.nms_mode}

