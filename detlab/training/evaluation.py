"""The one evaluation loop, for every task: once, every N steps (keeping the best), or
continuously.

`evaluate` runs `task.predict` per replica of the strategy (each replica on its share of the
batch, inside `strategy.run`), brings the outputs to the host and feeds them, with the batch,
to `task.evaluator(model)` (evaluation/base.py); the evaluator gives the metrics and draws the
PNG. `PeriodicEvaluator` adds what training needs around it: the EMA weights swapped in for
the evaluation (EmaConfig.evaluate_average) and back afterwards, the BN statistics of those
weights re-estimated on training batches for the evaluation and put back afterwards
(`BatchNormReestimation`, training/bn_reestimation.py; precise BN), `num_eval_images`,
metrics.json, TensorBoard and the best checkpoint. `stop_requested()` (SIGTERM) is checked
before every batch: an evaluation stopped that way writes nothing and returns None, so a
preempted job stops within one batch's time.
"""
import contextlib
import os
import time

from absl import logging
import tensorflow as tf

from detlab import io
from detlab.progress import Progress
from detlab.tasks.base import scalar_metrics
from detlab.training.bn_reestimation import (BatchNormReestimation, BatchNormReestimator,
                                             record as reestimation_record)
from detlab.training.checkpoint import BestCheckpoint


def replica_predict(strategy: tf.distribute.Strategy, predict_fn):
  """`predict_fn(features) -> {name: [B, ...]}` run per replica inside `strategy.run`: every
  feature is split across the replicas (the batch padded to a multiple of their count by
  repeating its last image), each replica runs `predict_fn` on its part, and the parts are
  gathered back in order.

  One worker's replicas only: every worker of a multi-worker job evaluates the whole set
  itself (the metrics are computed on the host anyway)."""
  if strategy.num_replicas_in_sync <= 1:
    return predict_fn
  replicas = len(strategy.extended.worker_devices)  # this worker's
  if replicas != strategy.num_replicas_in_sync:  # multi-worker: see above
    return predict_fn

  def predict(features):
    size = tf.shape(next(iter(features.values())))[0]
    pad = (-size) % replicas

    def split(value):
      padded = tf.concat([value, tf.repeat(value[-1:], pad, axis=0)], axis=0)
      return tf.split(padded, replicas)
    parts = {k: split(v) for k, v in features.items()}
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[ctx.replica_id_in_sync_group] for k, v in parts.items()})
    outputs = strategy.run(predict_fn, args=(per_replica,))
    return {k: tf.concat(strategy.experimental_local_results(v), axis=0)[:size]
            for k, v in outputs.items()}
  return predict


def predictor(task, model, strategy: tf.distribute.Strategy | None = None):
  """`task.predict` of `model`, per replica of `strategy`, as one tf.function of its own: a
  second model gets a second function (nothing traced over one model serves another)."""
  strategy = strategy or tf.distribute.get_strategy()
  # No reduce_retracing: the image size must stay static (the heads' flattening needs it);
  # a smaller last batch traces once more.
  return tf.function(replica_predict(strategy, lambda f: task.predict(model, f)))


def evaluate(task, model, batches, strategy: tf.distribute.Strategy | None = None,
             png_path: str | None = None, num_images: int | None = None,
             stop_requested=lambda: False, predict=None) -> tuple[dict, dict]:
  """(metrics, extra) of `task.evaluator(model)` over `batches` (eval batches, dicts of
  tensors), the network run per replica of `strategy`; the evaluator's PNG at `png_path`.
  num_images: the first N images only. stop_requested(): checked before every batch; True
  raises Stopped. predict: a `predictor(task, model, strategy)` to reuse (its traces)."""
  predict = predict or predictor(task, model, strategy)
  evaluator = task.evaluator(model)
  progress = Progress(num_images or 0, unit="images", min_interval=5.0)
  seen = 0
  for batch in batches:
    if stop_requested():
      raise Stopped()
    size = int(tf.shape(batch["images"])[0])
    if num_images is not None and size > num_images - seen:
      size = num_images - seen
      batch = {k: v[:size] for k, v in batch.items()}
    if size <= 0:
      break
    outputs = predict({k: batch[k] for k in task.predict_features})
    evaluator.update({k: v.numpy() for k, v in batch.items()},
                     {k: v.numpy() for k, v in outputs.items()})
    seen += size
    if num_images:
      progress.update(seen, prefix="eval ")
      if seen >= num_images:
        break
  if stop_requested():
    raise Stopped()
  metrics, extra = evaluator.result()
  if png_path:
    evaluator.draw(png_path)
  return metrics, extra


class PeriodicEvaluator:
  """`evaluate` on `make_dataset()` for training: EMA weights, metrics.json, eval/ summaries
  and the best checkpoint. Task-free: the task predicts and evaluates (tasks/base.py), names
  its TensorBoard prefix and PNG, formats the printed lines and the metrics.json content."""

  def __init__(self, model_dir: str, task, model, make_dataset, num_images: int | None = None,
               average=None, best: BestCheckpoint | None = None, output_dir: str | None = None,
               stop_requested=lambda: False, strategy: tf.distribute.Strategy | None = None,
               summary_dir: str | None = None,
               bn_reestimation: BatchNormReestimation | None = None,
               make_train_batches=None):
    """num_images: evaluate only the first N images (None: all). output_dir: where
    metrics.json and the PNG go (default model_dir). summary_dir: where the TensorBoard
    events go (default model_dir/eval; an eval sidecar, whose model_dir is already
    model_dir/eval, passes that). strategy: the model's (the network runs per replica, see
    `replica_predict`). `close()` flushes and closes the summary writer.
    bn_reestimation, make_train_batches(step): with a BatchNormReestimation whose
    num_batches > 0 (None: off), every evaluation first
    re-estimates the BN statistics of the weights it evaluates (EMA ones included) on the
    first num_batches global training batches of `make_train_batches(step)` (an iterable of
    batch dicts); metrics.json then says so ("bn_reestimation"). The model's statistics
    (and so checkpoints, EMA shadows, best/) are back to their trained values afterwards."""
    self.model_dir, self.task, self.model = model_dir, task, model
    self.make_dataset, self.num_images = make_dataset, num_images
    self.average, self.best = average, best
    self.output_dir, self.stop_requested = output_dir or model_dir, stop_requested
    self.strategy = strategy or tf.distribute.get_strategy()
    self.predict = predictor(task, model, self.strategy)  # traced once for this model
    self.bn_batches = bn_reestimation.num_batches if bn_reestimation else 0
    if self.bn_batches and make_train_batches is None:
      raise ValueError("BN re-estimation needs training batches (make_train_batches).")
    self.make_train_batches = make_train_batches
    self.reestimator = BatchNormReestimator(model, self.strategy) if self.bn_batches else None
    self.last_reestimation = None  # the summary of the latest evaluation's re-estimation
    self.writer = tf.summary.create_file_writer(summary_dir or os.path.join(model_dir, "eval"))

  def close(self) -> None:
    self.writer.close()

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
    except Stopped:
      logging.warning("Evaluation of step %d stopped on request; nothing written.", step)
      return None
    print(f"Step {step} ({weights} weights):\n" + self.task.format_metrics(metrics, extra),
          flush=True)
    record = {**self.task.metrics_record(metrics, extra), "step": step, "weights": weights,
              **reestimation_record(self.last_reestimation)}
    io.write_json(os.path.join(self.output_dir, "metrics.json"), record)
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
    self.last_reestimation = None
    reestimate = contextlib.nullcontext()
    if self.reestimator is not None:
      try:
        batches = self.make_train_batches(step)
      except (ValueError, tf.errors.OpError) as error:  # e.g. an eval job without train data
        logging.warning("BN re-estimation skipped (the training batches cannot be read: "
                        "%s); evaluating the trained statistics. Bind "
                        "train.bn_reestimation = None to turn it off.", error)
      else:
        reestimate = self.reestimator.reestimated(batches, self.bn_batches,
                                                  self.stop_requested)
    with reestimate as summary:
      self.last_reestimation = summary
      return evaluate(self.task, self.model, self.make_dataset(), self.strategy,
                      os.path.join(self.output_dir, self.task.png_name), self.num_images,
                      self.stop_requested, self.predict)


class Stopped(Exception):
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
