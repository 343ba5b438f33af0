"""What a task gives the shared training root (training/experiment.py: `train`).

A task owns everything that differs between detection, classification and segmentation: its
model, its input pipelines, its loss, its pre-flight data checks, its prediction (`predict`,
pure TF, run per replica) and its evaluator (`evaluator`: metrics and a PNG from predict's
outputs on the host). The root owns everything else (strategy, one writer, seed, precision,
optimizer, EMA, checkpoints, the training loop and the one evaluation loop, TensorBoard,
progress, init-from-checkpoint, continuous eval) and calls only the methods below. A task
holds no model: every method that needs one takes it as an argument. The split follows TF Model Garden's
`official.core.base_task.Task` (build_model / build_inputs / build_losses / validation
metrics), cut down to what detlab's own loop needs: tfm's Task also owns the train step and
the optimizer, which detlab keeps in the task-free Trainer (training/loop.py).
"""
import abc

import tensorflow as tf
import tf_keras as keras

from detlab.evaluation.base import Evaluator


class Task(abc.ABC):
  """Subclass, register with gin (`train.task = @MyTask()`), and implement the abstract
  methods; see WORKSPACE.md "How to add a task"."""

  name = "task"
  # The metric best/ keeps the checkpoint with the highest value of (higher is better); None:
  # no best/ (a task must name a metric where higher is better, never a loss).
  primary_metric = None
  summary_prefix = "eval"     # TensorBoard scalars: eval/<summary_prefix>/<metric>
  png_name = "eval.png"       # the evaluator's picture, in the evaluation's output folder
  summary_image = "eval"      # its TensorBoard image tag
  loss_parts = ()             # compute_loss keys besides "total" that the loop logs
  predict_features = ("images",)  # the eval batch's keys that predict() reads
  settings = ()               # run settings train() may hand over (see `use_settings`)
  # Every task takes `bn_momentum` (gin: <Task>.bn_momentum) and applies it in build_model
  # with `set_bn_momentum` below; None keeps the model's own momenta.
  bn_momentum = None
  example_gin = ""            # a gin file that binds this task (named in errors)

  @abc.abstractmethod
  def build_model(self) -> tf.Module:
    """The model; called once inside `strategy.scope()` (and the precision policy)."""

  def describe(self, model) -> str:
    """One log line about the built model."""
    return f"Model {model.name}: {model.count_params():,} parameters"

  def preflight(self, model) -> None:
    """Checks that must fail before step 1, not at step N (e.g. label ids vs classes)."""

  def use_settings(self, **settings) -> None:
    """Takes the run settings bound on train() (train.label_map_file, train.annotation_file,
    train.coco_backend: README bindings that predate train.task) that this task names in
    `settings`; a value the task does not use, or one that contradicts the task's own
    binding, is an error naming the binding to use."""
    for key, value in settings.items():
      if value is None:
        continue
      if key not in self.settings:
        raise ValueError(f"train.{key} does not apply to the {self.name} task; remove it "
                         "(or bind the task's own parameter, see its gin file).")
      own = getattr(self, key)
      if own is not None and own != value:
        raise ValueError(f"train.{key} = {value!r} contradicts "
                         f"{type(self).__name__}.{key} = {own!r}; bind one of them.")
      setattr(self, key, value)

  def input_config(self, training: bool):
    """`train_input` or `eval_input`, or an error naming the binding when it is unset."""
    which = "train_input" if training else "eval_input"
    config = getattr(self, which, None)
    if config is None:
      raise ValueError(f"{type(self).__name__}.{which} is not set; bind it (see "
                       f"{self.example_gin or 'the README'}).")
    return config

  @abc.abstractmethod
  def train_dataset(self, model, input_context, per_replica_batch: int, seed: int | None,
                    start_step: int = 0) -> tf.data.Dataset:
    """One replica's training batches (dicts); randomness stateless per example from `seed`
    keeps resume exact. start_step: the step the stream starts at (a resumed run whose
    iterator position is not in the checkpoint); a task whose stream changes with the step
    (progressive learning) starts there."""

  @abc.abstractmethod
  def eval_dataset(self, model, batch_size: int) -> tf.data.Dataset:
    """Evaluation batches (dicts) in a fixed order."""

  @abc.abstractmethod
  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    """{"total": per-replica scalar, other named parts for the log line}, float32."""

  @abc.abstractmethod
  def predict(self, model, features: dict) -> dict:
    """The inference outputs {name: [B, ...] tensor} of `model` for the eval batch's
    `predict_features`: pure TF, no Python state (the evaluation loop runs it per replica
    inside `strategy.run`, in a tf.function of its own for each model)."""

  @abc.abstractmethod
  def evaluator(self, model) -> Evaluator:
    """A fresh evaluation/base.py Evaluator for `model`'s outputs (metrics and picture)."""

  def format_metrics(self, metrics: dict, extra: dict) -> str:
    """The lines printed after an evaluation."""
    return ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())

  def metrics_record(self, metrics: dict, extra: dict) -> dict:
    """metrics.json's content (the root adds "step" and "weights")."""
    return {"metrics": metrics, **extra}


def _fmt(value) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def scalar_metrics(metrics: dict) -> dict:
  """The metrics TensorBoard can plot: finite-or-None numbers only, lists left out."""
  return {k: float(v) for k, v in metrics.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def set_bn_momentum(model, momentum: float | None) -> None:
  """Sets every BatchNormalization layer's moving-statistics momentum (None: leave the
  model's): every task's `bn_momentum` (Detection, Classification, Segmentation, Joint).
  A training-recipe knob, not part of the model: the papers' 0.99 lags behind weights
  that still move fast in a few-hundred-step from-scratch run (the shapes demos), so
  inference-mode BN then sees stale statistics; 0.9 (EfficientNetV2's) keeps up."""
  if momentum is None:
    return
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"bn_momentum must be in [0, 1), got {momentum}.")
  for layer in model.submodules:  # detlab's BN subclass and stock tf_keras BN layers
    if isinstance(layer, (keras.layers.BatchNormalization,
                          keras.layers.experimental.SyncBatchNormalization)):
      layer.momentum = momentum
