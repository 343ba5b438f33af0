"""BatchNorm statistics re-estimated before an evaluation or an export ("precise BN").

Y. Wu and J. Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, 2021: the moving
averages a BN layer keeps while training lag the weights (each value mixes statistics of
many older weights), which hurts most when the weights still move fast: a short run, a
high learning rate, a small data set. Precise BN replaces them, before inference, by the
population statistics of the current weights over N training batches, each batch weighted
equally.

What runs here (`BatchNormReestimator`):
  * The weights being evaluated (the caller swaps EMA weights in first, as
    training/evaluation.py's PeriodicEvaluator does) run `model(images, training=False)` on N
    training batches (the task's own training pipeline and augmentation): every layer in
    inference mode (no dropout, no stochastic depth, no training-only aux heads) except the
    BatchNormalization layers, which normalise by the statistics of the batch in front of
    them, as they do in a training step, and report those statistics. Every
    tf_keras BatchNormalization counts (detlab's subclass in layers/normalization.py and the
    stock layers of imported keras-applications backbones and of test nets alike) and
    SyncBatchNormalization; a layer with trainable=False (frozen BN, which trains in
    inference mode too) and a layer the inference pass never calls (an aux head's) keep
    their statistics.
  * Replicas: each replica runs its share of the global batch inside `strategy.run` and the
    BN layers all-reduce their sums, so every layer sees the moments of the whole global
    batch: N replicas give what one device gives on the same global batches. A
    multi-worker job's workers each run alone (no collective that a single worker's
    SIGTERM could leave hanging), as its evaluation does, on one replica's share of the
    batch; the stream (training/experiment.py) is the same unsharded one on every worker,
    so they agree.
  * Per layer, batch b gives the mean mu_b and the variance s2_b of its input over every
    axis but the channel's (over all the layer's calls in that forward pass). The new
    moving_mean = mean_b(mu_b) and moving_variance = mean_b(s2_b + mu_b^2) - moving_mean^2,
    i.e. the variance of all N batches' values together (evaluated in float64 as
    mean_b(s2_b) + mean_b((mu_b - moving_mean)^2), which is the same number without the
    cancellation), with no Bessel correction (N x B x H x W values per channel). Averaging
    the batch variances alone (as fvcore's update_bn_stats does) would leave out the spread
    of the batch means.

`reestimated(...)` assigns the new statistics for the duration of a block and puts back the
exact previous values afterwards: checkpoints, EMA shadows and best/ never hold them.
"""
import contextlib
import dataclasses
import threading
import time
from typing import Callable, Iterable

from absl import logging
import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from detlab.progress import Progress

BATCH_NORM_TYPES = (keras.layers.BatchNormalization,
                    keras.layers.experimental.SyncBatchNormalization)


@gin.register(module="detlab.training")
@dataclasses.dataclass(frozen=True)
class BatchNormReestimation:
  """Binding `train.bn_reestimation = @BatchNormReestimation()` turns it on: `num_batches`
  training batches of the run's global batch size (Schedule.batch_size) re-estimate every BN
  layer's statistics before each evaluation (and before `python -m detlab.export`); 0 (or
  train.bn_reestimation = None, train's default) turns it off.

  Off unless bound: the papers' recipes train 300+ epochs with EMA, where the moving
  statistics keep up, and a published checkpoint must evaluate as it was trained. The short
  demo recipes bind it. 25 batches: 800 images at the demos' batch 32, a few seconds of a
  CPU demo's evaluation; the estimate's error shrinks as 1/sqrt(num_batches)."""
  num_batches: int = 25

  def __post_init__(self):
    if self.num_batches < 0:
      raise ValueError(f"BatchNormReestimation.num_batches must be >= 0 (0: off), got "
                       f"{self.num_batches}.")


def batch_norm_layers(model) -> list:
  """Every BatchNormalization layer reachable from `model` that trains its statistics (in
  a fixed order, each once)."""
  layers, seen = [], set()
  for module in [model, *model.submodules]:
    if isinstance(module, BATCH_NORM_TYPES) and id(module) not in seen:
      seen.add(id(module))
      if module.trainable:
        layers.append(module)
  return layers


_REPLICA = threading.local()  # the collector of the replica (thread) that is tracing


def _statistics_call(layer, index: int):
  """A replacement for `layer.call`: normalise by the global batch's moments (all-reduced
  across replicas) and record them in the tracing replica's collector."""

  @tf.autograph.experimental.do_not_convert
  def call(inputs, training=None, mask=None):  # pylint: disable=unused-argument
    x = tf.cast(inputs, tf.float32)
    axes = [a for a in range(x.shape.rank) if a not in layer.axis]
    context = tf.distribute.get_replica_context()
    reduce = (context.all_reduce if context is not None and context.num_replicas_in_sync > 1
              else lambda _, value: value)
    sums = tf.reduce_sum(x, axes)
    count = tf.cast(tf.size(x), tf.float32) / tf.cast(tf.size(sums), tf.float32)
    sums, count = reduce(tf.distribute.ReduceOp.SUM, [sums, count])
    mean = sums / count
    shape = [x.shape[a] if a in layer.axis else 1 for a in range(x.shape.rank)]
    centred = tf.reduce_sum(tf.square(x - tf.reshape(mean, shape)), axes)
    variance = reduce(tf.distribute.ReduceOp.SUM, centred) / count
    _REPLICA.collector.setdefault(index, []).append((mean, variance, count))
    gamma = tf.reshape(tf.cast(layer.gamma, tf.float32), shape) if layer.scale else None
    beta = tf.reshape(tf.cast(layer.beta, tf.float32), shape) if layer.center else None
    outputs = tf.nn.batch_normalization(x, tf.reshape(mean, shape),
                                        tf.reshape(variance, shape), beta, gamma,
                                        layer.epsilon)
    return tf.cast(outputs, inputs.dtype)
  return call


@contextlib.contextmanager
def _statistics_mode(layers):
  """Inside, `layers` normalise by batch statistics and record them (see the module doc);
  their own `call` is back afterwards."""
  for index, layer in enumerate(layers):
    object.__setattr__(layer, "call", _statistics_call(layer, index))
  try:
    yield
  finally:
    for layer in layers:
      object.__delattr__(layer, "call")


def _combine_calls(calls) -> tuple[np.ndarray, np.ndarray]:
  """(mean, variance) over a forward pass's calls of one layer [(mean, variance, count)]."""
  counts = np.array([float(c) for _, _, c in calls])
  means = np.stack([np.asarray(m, np.float64) for m, _, _ in calls])
  variances = np.stack([np.asarray(v, np.float64) for _, v, _ in calls])
  weights = (counts / counts.sum())[:, None]
  mean = (weights * means).sum(0)
  return mean, (weights * (variances + (means - mean) ** 2)).sum(0)


class BatchNormReestimator:
  """Re-estimates `model`'s BN statistics on training batches (module docstring).

  One per model: its traced step is the model's own. `strategy`: the model's (its variables'
  strategy; the pass runs per replica of it)."""

  def __init__(self, model, strategy: tf.distribute.Strategy | None = None):
    self.model = model
    self.strategy = strategy or tf.distribute.get_strategy()
    self.layers = batch_norm_layers(model)
    self._step = tf.function(self._global_step)

  def _replica_step(self, images):
    _REPLICA.collector = {}
    try:
      self.model(images, training=False)
      return dict(_REPLICA.collector)
    finally:
      _REPLICA.collector = None

  @property
  def replicas(self) -> int:
    """The replicas a global batch is split across (1: run as one)."""
    strategy = self.strategy
    if strategy.num_replicas_in_sync <= 1:
      return 1
    if len(strategy.extended.worker_devices) != strategy.num_replicas_in_sync:
      return 1  # multi-worker: each worker alone (module docstring)
    return strategy.num_replicas_in_sync

  def _global_step(self, images):
    replicas = self.replicas
    if replicas == 1:
      return self._replica_step(images)
    parts = tf.split(images, replicas)
    per_replica = self.strategy.experimental_distribute_values_from_function(
        lambda ctx: parts[ctx.replica_id_in_sync_group])
    outputs = self.strategy.run(self._replica_step, args=(per_replica,))
    # Every replica holds the same all-reduced values: take the first one's.
    return tf.nest.map_structure(
        lambda value: self.strategy.experimental_local_results(value)[0], outputs)

  def estimate(self, batches: Iterable, num_batches: int,
               stop_requested: Callable[[], bool] = lambda: False) -> dict | None:
    """{"statistics": {layer index: (mean, variance)} float64, "batches", "images",
    "seconds"} over the first `num_batches` of `batches` (dicts with "images" [B, ...], B
    a multiple of the replicas); None when `stop_requested()` turned True before a batch."""
    started = time.monotonic()
    per_layer: dict[int, list] = {}
    images_seen, done = 0, 0
    progress = Progress(num_batches, unit="batches", min_interval=5.0)
    with _statistics_mode(self.layers):
      for batch in batches:
        if done >= num_batches:
          break
        if stop_requested():
          return None
        images = batch["images"] if isinstance(batch, dict) else batch
        size = int(images.shape[0])
        if size % self.replicas:
          raise ValueError(f"BN re-estimation: a batch of {size} images does not split "
                           f"across {self.replicas} replicas.")
        found = self._step(images)
        for index, calls in found.items():
          per_layer.setdefault(index, []).append(
              _combine_calls([tuple(t.numpy() for t in call) for call in calls]))
        images_seen, done = images_seen + size, done + 1
        progress.update(done, prefix="BN statistics ")
    statistics = {}
    for index, batch_moments in per_layer.items():
      means = np.stack([m for m, _ in batch_moments])
      variances = np.stack([v for _, v in batch_moments])
      mean = means.mean(0)
      statistics[index] = (mean, variances.mean(0) + ((means - mean) ** 2).mean(0))
    return {"statistics": statistics, "batches": done, "images": images_seen,
            "seconds": time.monotonic() - started}

  def assign(self, statistics: dict) -> None:
    for index, (mean, variance) in statistics.items():
      layer = self.layers[index]
      layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype.as_numpy_dtype))
      layer.moving_variance.assign(
          variance.astype(layer.moving_variance.dtype.as_numpy_dtype))

  def saved(self) -> list:
    """[(variable, its value)] of every layer's moving statistics, to put back later."""
    return [(v, v.numpy()) for layer in self.layers
            for v in (layer.moving_mean, layer.moving_variance)]

  @contextlib.contextmanager
  def reestimated(self, batches: Iterable, num_batches: int,
                  stop_requested: Callable[[], bool] = lambda: False):
    """Inside: the statistics re-estimated over `num_batches` of `batches`; yields the
    summary (`estimate`'s, with "layers" re-estimated and "of" the model's BN layers), or
    None (nothing changed) when num_batches is 0, `batches` is empty or a stop came. On
    exit every moving statistic is back to its exact value from before."""
    if num_batches <= 0:
      yield None
      return
    previous = self.saved()
    try:
      summary = self.estimate(batches, num_batches, stop_requested)
      if summary is not None:
        self.assign(summary["statistics"])
        summary = {**summary, "layers": len(summary["statistics"]), "of": len(self.layers)}
        log_summary(summary)
      yield summary if summary and summary["batches"] else None
    finally:
      for variable, value in previous:
        variable.assign(value)


def log_summary(summary: dict) -> None:
  logging.info("BN re-estimation (precise BN): statistics of %d of %d BatchNorm layers over "
               "%d training batches (%d images) in %.1f s.", summary["layers"], summary["of"],
               summary["batches"], summary["images"], summary["seconds"])
  if summary["batches"] == 0:
    logging.warning("BN re-estimation saw no training batch; the statistics are unchanged.")


def record(summary: dict | None) -> dict:
  """What metrics.json / export.json say about a re-estimation (empty when none ran)."""
  if not summary:
    return {}
  return {"bn_reestimation": {"batches": summary["batches"], "images": summary["images"],
                              "layers": summary["layers"]}}


def statistics_batch_size(strategy: tf.distribute.Strategy, global_batch: int) -> int:
  """The batch the statistics pass reads at once: the global batch, split across this
  worker's replicas; a multi-worker job's worker reads one replica's share (it runs
  alone)."""
  replicas = strategy.num_replicas_in_sync
  if replicas > 1 and len(strategy.extended.worker_devices) != replicas:
    return max(1, global_batch // replicas)
  return global_batch
