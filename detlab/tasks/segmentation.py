"""Semantic segmentation task for the shared training root (`train.task = @SegmentationTask()`):
the EfficientDet paper's segmenter, its inputs, the per-pixel loss, and mIoU at each image's
original resolution with the overlay PNG (detlab/evaluation/segmentation.py)."""
from typing import Callable

import gin

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.segmentation_input import SegmentationInputConfig, make_dataset
from detlab.evaluation.segmentation import SegmentationTaskEvaluator
from detlab.segmentation.loss import SegmentationLoss
from detlab.tasks.base import Task, set_bn_momentum


@gin.register(module="detlab.tasks")
class SegmentationTask(Task):
  """Glue between a segmenter (logits [B, S, S, K]), its inputs, loss and evaluator."""

  name = "segmentation"
  loss_parts = ()
  primary_metric = "mIoU"
  summary_prefix = "segmentation"
  png_name = "eval_segmentation.png"
  summary_image = "segmentation"
  example_gin = "segmentation_d0_shapes.gin"

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
    self.bn_momentum = bn_momentum

  def build_model(self):
    model = self.model_fn()
    set_bn_momentum(model, self.bn_momentum)
    return model

  def _dataset(self, training, model, batch, context=None, seed=None):
    return make_dataset(self.input_config(training), batch, context, seed,
                        input_convention(model, default=IMAGENET_MEAN_STD))

  def train_dataset(self, model, input_context, per_replica_batch, seed, start_step=0):
    del start_step  # the stream does not change with the step
    return self._dataset(True, model, per_replica_batch, input_context, seed)

  def eval_dataset(self, model, batch_size):
    return self._dataset(False, model, batch_size)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    logits = model(batch["images"], training=training)
    return self.loss(logits, batch["labels"])

  def predict(self, model, features):
    """{"logits": [B, S, S, K]} at the model input's size."""
    return {"logits": model(features["images"], training=False)}

  def evaluator(self, model):
    return self.evaluator_for(model.num_classes,
                              input_convention(model, default=IMAGENET_MEAN_STD))

  def evaluator_for(self, num_classes: int, convention):
    """The evaluator of logits over `num_classes` of images normalised by `convention`."""
    return SegmentationTaskEvaluator(num_classes, self.loss.ignore_label, convention,
                                     dict(enumerate(self.class_names or [])),
                                     self.num_visualize)

  def format_metrics(self, metrics, extra):
    miou = metrics["mIoU"]
    return (f"mIoU {'n/a' if miou is None else f'{miou:.4f}'}, pixel accuracy "
            f"{metrics['pixel_accuracy']:.4f} ({metrics['num_images']} images); per-class IoU "
            + ", ".join("n/a" if v is None else f"{v:.3f}" for v in extra["per_class_iou"]))

  def metrics_record(self, metrics, extra):
    """metrics.json: mIoU, per_class_iou, pixel_accuracy at the top level (and under
    "metrics" as detection's file has them)."""
    return {**metrics, **extra, "metrics": metrics}
