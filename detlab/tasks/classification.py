"""Classification task: model, inputs, loss and evaluation for the shared training root
(`train.task = @ClassificationTask()`; see tasks/base.py).

Loss (float32): softmax cross-entropy with label smoothing (0.1 in the EfficientNet and
Inception v3 recipes) on the main logits plus sum_k w_k x the same loss on each auxiliary
head's logits (GoogLeNet 0.3 each, Inception v3/v4/ResNet-v2 0.4). With Mixup/CutMix the
batch carries "mix_labels" and "mix_weight" w, and every term is w CE(labels) +
(1 - w) CE(mix_labels). Weight decay is the Trainer's.

Progressive learning (EfficientNetV2; `ClassificationTask.progressive =
@ProgressiveConfig()`, detlab/data/progressive.py): the training stream is the stages'
pipelines in order, the classifier takes any image size and its dropout follows the batch's
"dropout_rate"; evaluation runs at `eval_image_size`.
"""
from typing import Callable

from absl import logging
import gin
import tensorflow as tf

from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.backbones.conventions import InputConvention
from detlab.data.label_map import class_names as read_class_names
from detlab.data.classification_input import (ClassificationInputConfig,
                                              make_classification_dataset, normalization)
from detlab.data.progressive import (ProgressiveConfig, progressive_dataset,
                                     progressive_stages)
from detlab.evaluation.classification import ClassificationTaskEvaluator
from detlab.models.classifier import classifier
from detlab.layers.scheduled_dropout import scheduled_dropout_layers, scheduled_dropout_rate
from detlab.tasks.base import Task, set_bn_momentum


def smoothed_cross_entropy(logits: tf.Tensor, labels: tf.Tensor,
                           label_smoothing: float) -> tf.Tensor:
  """Per-example CE [B] of logits [B, K] against integer labels [B] smoothed to
  (1 - s) one_hot + s / K."""
  logits = tf.cast(logits, tf.float32)
  num_classes = tf.shape(logits)[-1]
  targets = tf.one_hot(labels, num_classes)
  targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(num_classes,
                                                                          tf.float32)
  return tf.nn.softmax_cross_entropy_with_logits(targets, logits)


@gin.register(module="detlab.tasks")
class ClassificationTask(Task):
  """Glue between a classifier, its input pipeline, its loss and its evaluator."""

  name = "classification"
  loss_parts = ("class", "aux")
  primary_metric = "top1"
  summary_prefix = "classification"
  png_name = "eval_classification.png"
  summary_image = "classification"
  example_gin = "classification_efficientnet_b0_demo.gin"

  def __init__(self, num_classes: int, image_size: int, train_input=None, eval_input=None,
               model_fn: Callable = classifier, label_smoothing: float = 0.1,
               class_names: list[str] | None = None, label_map_file: str | None = None,
               eval_image_size: int | None = None,
               progressive: ProgressiveConfig | None = None,
               bn_momentum: float | None = None):
    """train_input / eval_input: ClassificationInputConfig (file_pattern or tfds_name);
    their image_size and is_training are set here. model_fn: the classifier builder,
    called with num_classes and image_size (bind backbone_fn etc. on it); image_size None
    (any input size) when eval_image_size differs or with progressive learning, which also
    passes scheduled_dropout=True.
    label_map_file: class names by label (else class_names, else the label numbers).
    eval_image_size: the evaluation size (None: image_size, the training size).
    progressive: EfficientNetV2 progressive learning (None: every step at the final values).
    bn_momentum: every BN layer's momentum for training, the backbone's, the head's and
    the aux heads' alike (tasks.base.set_bn_momentum; None: the model's)."""
    if class_names is None and label_map_file:
      class_names = read_class_names(label_map_file)
    if class_names is not None and len(class_names) > num_classes:
      raise ValueError(f"NUM_CLASSES is {num_classes} but the label map has "
                       f"{len(class_names)} classes; set NUM_CLASSES = {len(class_names)}.")
    self.num_classes, self.image_size = num_classes, image_size
    self.train_input, self.eval_input = train_input, eval_input
    self.model_fn, self.label_smoothing = model_fn, label_smoothing
    self.class_names = class_names
    self.convention = None  # the backbone's input convention, known once the model is built
    self.eval_image_size = eval_image_size or image_size
    self.progressive = progressive
    self.bn_momentum = bn_momentum

  def build_model(self):
    """Call inside `strategy.scope()`; build it before the inputs (they normalise by its
    backbone's input convention)."""
    dynamic = self.progressive is not None or self.eval_image_size != self.image_size
    extra = {"scheduled_dropout": True} if self.progressive is not None else {}
    model = self.model_fn(num_classes=self.num_classes,
                          image_size=None if dynamic else self.image_size, **extra)
    set_bn_momentum(model, self.bn_momentum)
    try:
      self.convention = input_convention(model)
    except ValueError:  # a backbone without a registered convention: ImageNet's
      self.convention = None
    return model

  def build_inputs(self, training: bool, batch_size: int, input_context=None,
                   seed: int | None = None) -> tf.data.Dataset:
    base = self.input_config(training)
    config = ClassificationInputConfig(**{
        **vars(base), "is_training": training,
        "image_size": self.image_size if training else self.eval_image_size})
    return make_classification_dataset(config, batch_size, input_context, seed,
                                       self.convention)

  def stages(self, model) -> list:
    """Progressive learning's stages: the last at the train input's magnitude and alphas,
    this task's image_size and the model's dropout rate."""
    layers = scheduled_dropout_layers(model)
    if not layers:
      raise ValueError("Progressive learning needs a classifier with a ScheduledDropout; "
                       "ClassificationTask.model_fn must take scheduled_dropout=True.")
    base = self.train_input
    return progressive_stages(self.progressive, self.image_size, base.randaugment_magnitude,
                              base.mixup_alpha, base.cutmix_alpha, layers[0].rate)

  def train_dataset(self, model, input_context, per_replica_batch, seed, start_step=0):
    if self.progressive is None:
      return self.build_inputs(True, per_replica_batch, input_context, seed)
    stages = self.stages(model)
    for s in stages:
      logging.info("Progressive stage %d: steps %d-%s, %d px, RandAugment magnitude %.2f, "
                   "mixup %.3f, cutmix %.3f, dropout %.3f", s.index, s.first_step,
                   s.end_step or "end", s.image_size, s.randaugment_magnitude, s.mixup_alpha,
                   s.cutmix_alpha, s.dropout_rate)

    def stage_dataset(stage, stage_seed):
      config = ClassificationInputConfig(**{
          **vars(self.train_input), "is_training": True, "image_size": stage.image_size,
          "randaugment_magnitude": stage.randaugment_magnitude,
          "mixup_alpha": stage.mixup_alpha, "cutmix_alpha": stage.cutmix_alpha})
      return make_classification_dataset(config, per_replica_batch, input_context,
                                         stage_seed, self.convention)
    return progressive_dataset(stages, stage_dataset, seed, start_step)

  def eval_dataset(self, model, batch_size):
    return self.build_inputs(False, batch_size)

  def _mixed_loss(self, logits, batch) -> tf.Tensor:
    loss = smoothed_cross_entropy(logits, batch["labels"], self.label_smoothing)
    if "mix_weight" in batch:
      other = smoothed_cross_entropy(logits, batch["mix_labels"], self.label_smoothing)
      loss = batch["mix_weight"] * loss + (1.0 - batch["mix_weight"]) * other
    return tf.reduce_mean(loss)

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    """{"total", "class" (main head), "aux" (weighted aux heads)}: per-replica means."""
    with scheduled_dropout_rate(model, batch.get("dropout_rate") if training else None):
      outputs = model(batch["images"], training=training)
    if not isinstance(outputs, dict):
      outputs = {"logits": outputs}
    main = self._mixed_loss(outputs["logits"], batch)
    aux = tf.constant(0.0)
    for key, weight in getattr(model, "aux_loss_weights", {}).items():
      if key in outputs:
        aux += weight * self._mixed_loss(outputs[key], batch)
    return {"total": main + aux, "class": main, "aux": aux}

  def predict(self, model, features):
    """{"logits": [B, K]} of the main head (inference form)."""
    outputs = model(features["images"], training=False)
    return {"logits": outputs["logits"] if isinstance(outputs, dict) else outputs}

  def evaluator(self, model):
    """Top-1/top-5/per-class accuracy and loss; the PNG un-normalises by the eval input's
    own mean/std when it sets them, else the backbone's convention."""
    convention = self.convention or IMAGENET_MEAN_STD
    if self.eval_input is not None:
      mean, std = normalization(self.eval_input, self.convention)
      convention = InputConvention(tuple(mean.numpy().tolist()), tuple(std.numpy().tolist()),
                                   source="the eval input's normalisation")
    return ClassificationTaskEvaluator(self.num_classes, convention,
                                       dict(enumerate(self.class_names or [])))

  def format_metrics(self, metrics, extra):
    return (f"top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}, loss "
            f"{metrics['loss']:.4f} ({metrics['num_examples']} images)")

  def metrics_record(self, metrics, extra):
    """metrics.json: top1, top5, per_class_accuracy at the top level (and under "metrics"
    as detection's file has them)."""
    return {**metrics, **extra, "metrics": metrics}
