"""What a task gives the shared training root (training/experiment.py: `train`).

A task owns everything that differs between detection, classification and segmentation: its
model, its input pipelines, its loss, its pre-flight data checks and its evaluation (metrics
and a PNG). The root owns everything else (strategy, one writer, seed, precision, optimizer,
EMA, checkpoints, the loop, TensorBoard, progress, init-from-checkpoint, continuous eval) and
calls only the methods below. The split follows TF Model Garden's
`official.core.base_task.Task` (build_model / build_inputs / build_losses / validation
metrics), cut down to what detlab's own loop needs: tfm's Task also owns the train step and
the optimizer, which detlab keeps in the task-free Trainer (training/loop.py).
"""
import abc

import tensorflow as tf
import tf_keras as keras


class Task(abc.ABC):
  """Subclass, register with gin (`train.task = @MyTask()`), and implement the abstract
  methods; see WORKSPACE.md "How to add a task"."""

  name = "task"
  primary_metric = "loss"     # BestCheckpoint keeps the checkpoint with its highest value
  summary_prefix = "eval"     # TensorBoard scalars: eval/<summary_prefix>/<metric>
  png_name = "eval.png"       # the PNG evaluate() writes into out_dir
  summary_image = "eval"      # its TensorBoard image tag
  loss_parts = ()             # compute_loss keys besides "total" that the loop logs

  @abc.abstractmethod
  def build_model(self) -> tf.Module:
    """The model; called once inside `strategy.scope()` (and the precision policy)."""

  def describe(self, model) -> str:
    """One log line about the built model."""
    return f"Model {model.name}: {model.count_params():,} parameters"

  def preflight(self, model) -> None:
    """Checks that must fail before step 1, not at step N (e.g. label ids vs classes)."""

  @abc.abstractmethod
  def train_dataset(self, model, input_context, per_replica_batch: int,
                    seed: int | None) -> tf.data.Dataset:
    """One replica's training batches (dicts); randomness stateless per example from `seed`
    keeps resume exact."""

  @abc.abstractmethod
  def eval_dataset(self, model, batch_size: int) -> tf.data.Dataset:
    """Evaluation batches (dicts) in a fixed order."""

  @abc.abstractmethod
  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    """{"total": per-replica scalar, other named parts for the log line}, float32."""

  @abc.abstractmethod
  def evaluate(self, model, dataset, out_dir: str, step: int,
               strategy: tf.distribute.Strategy | None = None,
               num_images: int | None = None) -> tuple[dict, dict]:
    """Evaluates `model` (inference form) over `dataset`; writes out_dir/`png_name`.
    Returns (metrics: {name: float or None}, extra: {name: JSON-able} such as per-class
    results); the root writes both into metrics.json and the results of train()."""

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
  model's). A training-recipe knob, not part of the model: the papers' 0.99 lags behind
  weights that still move fast in a few-hundred-step from-scratch run (the shapes demos),
  so inference-mode BN then sees stale statistics; 0.9 (EfficientNetV2's) keeps up."""
  if momentum is None:
    return
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"bn_momentum must be in [0, 1), got {momentum}.")
  for layer in model.submodules:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = momentum
