"""Joint detection + semantic segmentation task (`train.task = @JointTask()`): one model whose
BiFPN feeds EfficientDet's class/box heads and the P2 segmentation head
(models/joint.py), trained on one loss = detection loss + `seg_loss_weight` x segmentation loss,
and evaluated with both metric sets: COCO AP (the detection evaluator) and mIoU / per-class
IoU / pixel accuracy at original resolution (the segmentation evaluator).

Composed of the single-task pieces, not copies: the loss objects and evaluation of
DetectionTask and SegmentationTask are used as they are, each given a view of the joint model
that returns only its own outputs; the input is data/joint_input.py (DetectionParser + the
mask under the same augmentation). Evaluation reads the eval set once but runs the network
once per evaluator (detection's detect + NMS, segmentation's logits), the price of reusing
both evaluators unchanged.
"""
import io
import os
from typing import Callable

import gin
import numpy as np
from PIL import Image
import tensorflow as tf

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.joint_input import JointParser, check_joint_config, make_joint_dataset
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig
from detlab.segmentation.loss import SegmentationLoss
from detlab.tasks.base import Task, set_bn_momentum
from detlab.tasks.detection import DetectionTask
from detlab.tasks.segmentation import SegmentationEvaluation, SegmentationTask


class OutputView:
  """The joint model seen as a single-task model: call() returns `select(outputs)`, the
  other attributes (anchors, flatten_outputs, count_params, ...) are the joint model's."""

  def __init__(self, model, select: Callable, num_classes: int):
    self._model, self._select, self.num_classes = model, select, num_classes

  def __call__(self, images, training=None):
    return self._select(self._model(images, training=training))

  def __getattr__(self, name):
    return getattr(self._model, name)


def detection_view(model) -> OutputView:
  """(class_outputs, box_outputs), as DetectionTask expects."""
  return OutputView(model, lambda outputs: outputs[:2], model.num_classes)


def segmentation_view(model) -> OutputView:
  """Segmentation logits [B, S, S, K_seg], as SegmentationTask expects."""
  return OutputView(model, lambda outputs: outputs[2], model.seg_head.num_classes)


@gin.register(module="detlab.tasks")
class JointTask(Task):
  """DetectionTask + SegmentationTask on one JointDetectorSegmenter."""

  name = "joint"
  loss_parts = ("detection", "segmentation", "class", "box")
  summary_prefix = "joint"
  png_name = "eval_joint.png"      # the two PNGs below, stacked (TensorBoard shows this one)
  summary_image = "joint"

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
    self.detection = DetectionTask(None, detection_loss, postprocess_config,
                                   label_map_file=label_map_file,
                                   annotation_file=annotation_file, coco_backend=coco_backend)
    self.segmentation = SegmentationTask(model_fn=None, loss=segmentation_loss or
                                         SegmentationLoss(), class_names=class_names,
                                         num_visualize=num_visualize)
    self._views = None  # (model, detection view, segmentation view)

  def views(self, model) -> tuple[OutputView, OutputView]:
    """The two single-task views of `model`, made once per model (DetectionTask traces its
    detect function once, over the first view it is given)."""
    if self._views is None or self._views[0] is not model:
      self._views = (model, detection_view(model), segmentation_view(model))
      self.segmentation.convention = input_convention(model, default=IMAGENET_MEAN_STD)
    return self._views[1], self._views[2]

  def build_model(self):
    model = self.model_fn()
    set_bn_momentum(model, self.bn_momentum)
    self.views(model)
    return model

  def describe(self, model) -> str:
    return (f"Model {model.name}: {model.count_params():,} parameters, "
            f"{model.anchors.num_anchors} anchors, {model.seg_head.num_classes} "
            f"segmentation classes")

  def preflight(self, model) -> None:
    self.detection.train_input, self.detection.eval_input = self.train_input, self.eval_input
    self.detection.preflight(self.views(model)[0])

  def _dataset(self, config, model, batch, context=None, seed=None):
    parser = DetectionParser(config, model.anchors, model.num_classes,
                             input_convention(model, default=IMAGENET_MEAN_STD))
    return make_joint_dataset(JointParser(parser), batch, context, seed)

  def train_dataset(self, model, input_context, per_replica_batch, seed):
    if self.train_input is None:
      raise ValueError("JointTask.train_input is not set; bind it (see joint_d0.gin).")
    return self._dataset(self.train_input, model, per_replica_batch, input_context, seed)

  def eval_dataset(self, model, batch_size):
    if self.eval_input is None:
      raise ValueError("JointTask.eval_input is not set; bind it (see joint_d0.gin).")
    return self._dataset(self.eval_input, model, batch_size)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    """One forward pass; the two single-task losses on its outputs, weighted."""
    class_outputs, box_outputs, logits = model(batch["images"], training=training)
    cls, box = model.flatten_outputs(class_outputs, box_outputs)
    detection = self.detection.loss(cls, box, batch["cls_targets"], batch["box_targets"])
    segmentation = self.segmentation.loss(logits, batch["labels"])
    total = detection["total"] + self.seg_loss_weight * segmentation["total"]
    return {"total": total, "detection": detection["total"],
            "segmentation": segmentation["total"], "class": detection["class"],
            "box": detection["box"]}

  def evaluate(self, model, dataset, out_dir, step, strategy=None, num_images=None):
    """COCO metrics + mIoU/pixel_accuracy/num_images; extra {"per_class_AP",
    "per_class_iou"}; eval_detections.png, eval_segmentation.png and both in png_name."""
    detection_model, segmentation_model = self.views(model)
    segmentation = SegmentationEvaluation(self.segmentation, segmentation_model)

    def batches():  # one pass over the eval set feeds both evaluators
      for batch in dataset:
        segmentation.update(batch)
        yield batch

    metrics, extra = self.detection.evaluate(detection_model, batches(), out_dir, step,
                                             strategy, num_images)
    seg_metrics, seg_extra = segmentation.finish(out_dir)
    stack_pngs([os.path.join(out_dir, self.detection.png_name),
                os.path.join(out_dir, self.segmentation.png_name)],
               os.path.join(out_dir, self.png_name))
    return {**metrics, **seg_metrics}, {**extra, **seg_extra}

  def format_metrics(self, metrics, extra):
    return (self.detection.format_metrics(metrics, extra) + "\n" +
            self.segmentation.format_metrics(metrics, extra))

  def metrics_record(self, metrics, extra):
    """metrics.json: the segmentation keys (mIoU, per_class_iou, pixel_accuracy) and the COCO
    numbers at the top level, all metrics under "metrics", per_class_AP, nms."""
    return {**metrics, **extra, "metrics": metrics,
            "nms": self.detection.postprocess_config.nms_mode}


def stack_pngs(paths: list[str], out_path: str) -> None:
  """The PNGs at `paths` that exist, one above the other (left-aligned), as one PNG."""
  images = []
  for path in paths:
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path, "rb") as f:
        images.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB")))
  if not images:
    return
  width = max(image.shape[1] for image in images)
  rows = [np.pad(image, [[0, 0], [0, width - image.shape[1]], [0, 0]], constant_values=32)
          for image in images]
  buffer = io.BytesIO()
  Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format="PNG")
  with tf.io.gfile.GFile(out_path, "wb") as f:
    f.write(buffer.getvalue())
