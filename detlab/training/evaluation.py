"""Evaluation inside training (any task): once, every N steps (keeping the best), or continuously.

Evaluates the EMA weights when there are any (EmaConfig.evaluate_average), swapping them into
the model for the evaluation and back afterwards. `stop_requested()` (SIGTERM) is checked
before every batch: an evaluation stopped that way writes nothing and returns None, so a
preempted job stops within one batch's time.
"""
import json
import math
import os
import time

from absl import logging
import tensorflow as tf

from detlab.tasks.base import scalar_metrics
from detlab.training.checkpoint import BestCheckpoint


def _strict(value):
  """NaN and infinities -> None (JSON null): metrics.json stays strict JSON for any reader."""
  if isinstance(value, dict):
    return {str(k): _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
    return _strict(value.item())
  return value


def write_json(path: str, record: dict) -> None:
  """Strict JSON at `path` (any tf.io.gfile path: local, gs://, ram://)."""
  text = json.dumps(_strict(record), indent=1, allow_nan=False)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def replica_detect(strategy: tf.distribute.Strategy, detect_fn):
  """`detect_fn(images) -> {name: [B, ...]}` run per replica inside `strategy.run`: the batch
  is split across the replicas (padded to a multiple of their count), each replica runs the
  network and post-processing on its part, and the parts are gathered back in order.

  One worker's replicas only: every worker of a multi-worker job evaluates the whole set
  itself (the metrics are computed on the host anyway).
  """
  if strategy.num_replicas_in_sync <= 1:
    return detect_fn
  replicas = len(strategy.extended.worker_devices)  # this worker's
  if replicas != strategy.num_replicas_in_sync:  # multi-worker: see above
    return detect_fn

  @tf.function
  def detect(images):
    size = tf.shape(images)[0]
    pad = (-size) % replicas
    parts = tf.split(tf.pad(images, [[0, pad]] + [[0, 0]] * (images.shape.rank - 1)),
                     replicas)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: parts[ctx.replica_id_in_sync_group])
    outputs = strategy.run(detect_fn, args=(per_replica,))
    return {k: tf.concat(strategy.experimental_local_results(v), axis=0)[:size]
            for k, v in outputs.items()}
  return detect


class PeriodicEvaluator:
  """Runs `task.evaluate` on `make_dataset()` and writes metrics.json + eval/ summaries.

  Task-free: the task computes its metrics and PNG (tasks/base.py: Task.evaluate), names its
  TensorBoard prefix and PNG, formats the printed lines and the metrics.json content."""

  def __init__(self, model_dir: str, task, model, make_dataset, num_images: int | None = None,
               average=None, best: BestCheckpoint | None = None, output_dir: str | None = None,
               stop_requested=lambda: False, strategy: tf.distribute.Strategy | None = None):
    """num_images: evaluate only the first N images (None: all). output_dir: where
    metrics.json and the PNG go (default model_dir; an eval sidecar uses model_dir/eval).
    strategy: the model's (a task may run its network per replica, see `replica_detect`)."""
    self.model_dir, self.task, self.model = model_dir, task, model
    self.make_dataset, self.num_images = make_dataset, num_images
    self.average, self.best = average, best
    self.output_dir, self.stop_requested = output_dir or model_dir, stop_requested
    self.strategy = strategy or tf.distribute.get_strategy()
    self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))

  def __call__(self, step: int) -> tuple[dict, dict] | None:
    """Evaluates the current weights (EMA if configured) as those of `step`; returns
    (metrics, extra) (tasks/base.py), None if stopped."""
    weights = "EMA" if self.average is not None else "raw"
    logging.info("Evaluating step %d on %s weights.", step, weights)
    try:
      if self.average is not None:
        with self.average.swapped():
          metrics, extra = self._evaluate(step)
      else:
        metrics, extra = self._evaluate(step)
    except _Stopped:
      logging.warning("Evaluation of step %d stopped on request; nothing written.", step)
      return None
    print(f"Step {step} ({weights} weights):\n" + self.task.format_metrics(metrics, extra),
          flush=True)
    record = {**self.task.metrics_record(metrics, extra), "step": step, "weights": weights}
    write_json(os.path.join(self.output_dir, "metrics.json"), record)
    png = os.path.join(self.output_dir, self.task.png_name)
    with self.writer.as_default(step=step):
      for name, value in scalar_metrics(metrics).items():
        tf.summary.scalar(f"{self.task.summary_prefix}/{name}", value)
      if tf.io.gfile.exists(png):
        tf.summary.image(self.task.summary_image, tf.io.decode_png(tf.io.read_file(png), 3)[None])
    self.writer.flush()
    scalars = scalar_metrics(metrics)
    if self.best is not None and self.best.metric in scalars:  # None (e.g. no image): skip
      self.best.update(step, scalars)
    return metrics, extra

  def _evaluate(self, step: int) -> tuple[dict, dict]:
    tf.io.gfile.makedirs(self.output_dir)
    return self.task.evaluate(self.model, self._batches(), self.output_dir, step,
                              strategy=self.strategy, num_images=self.num_images)

  def _batches(self):
    """The eval batches, cut to `num_images` images, checking for a stop before each."""
    left = self.num_images
    for batch in self.make_dataset():
      if self.stop_requested():
        raise _Stopped()
      if left is not None:
        size = int(tf.shape(batch["images"])[0])
        if size > left:
          batch = {k: v[:left] for k, v in batch.items()}
        left -= min(size, left)
      yield batch
      if left == 0:
        break
    if self.stop_requested():
      raise _Stopped()


class _Stopped(Exception):
  """An evaluation stopped by `stop_requested()` (SIGTERM)."""


def evaluate_continuously(evaluator: PeriodicEvaluator, keeper, step_variable,
                          total_steps: int, timeout_s: float,
                          stop_requested=lambda: False) -> tuple[dict, dict] | None:
  """Evaluates each new checkpoint in keeper.read_dir until one of step >= total_steps
  arrives, no new checkpoint comes for `timeout_s` seconds, or `stop_requested()` (checked
  every second while waiting); returns the last results."""
  results, idle_since = None, time.monotonic()

  def give_up() -> bool:  # asked after each second without a new checkpoint
    return stop_requested() or time.monotonic() - idle_since > timeout_s

  for path in tf.train.checkpoints_iterator(keeper.read_dir, min_interval_secs=1,
                                            timeout=1, timeout_fn=give_up):
    if stop_requested():
      return results
    try:
      keeper.restore_path(path)
    except tf.errors.OpError as error:  # deleted by max_to_keep meanwhile, or half-written
      logging.warning("Skipping %s: %s", path, error.message.splitlines()[0])
      continue
    step = int(step_variable.numpy())
    evaluated = evaluator(step)
    if evaluated is None:  # stopped on request
      return results
    results, idle_since = evaluated, time.monotonic()
    if step >= total_steps:
      break
  else:
    if not stop_requested():
      logging.info("No new checkpoint in %s for %.0f s; stopping.", keeper.read_dir,
                   timeout_s)
  return results
