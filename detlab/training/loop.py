"""The training loop: several steps per tf.function call under any tf.distribute strategy.

Losses are computed per replica and scaled by 1 / num_replicas, so gradients summed across
replicas equal the gradient of the global mean. A loop of steps makes no host decision
between its steps (its while condition reads only the step counter, so a TPU or GPU runs the
steps back to back): it records the first non-finite step and that batch's source_ids on the
device and hands them back after the loop, where `run_training` rolls back. The ids travel as
int32 byte codes (detlab/data/source_id.py), so nothing in a step is a string and the whole
per-replica step, ids included, can run on a TPU or under XLA.

orbit's StandardTrainer/Controller run a similar loop; ours is kept because the loop must
hand back the first bad step and its batch's ids, which orbit's hooks do not track.
"""
from typing import Callable

from absl import logging
import tensorflow as tf
import tf_keras as keras

from detlab.data.source_id import SOURCE_ID_BYTES, decode_source_ids
from detlab.progress import Progress
from detlab.training.optimizer import backbone_optimizer_of, innermost


class NonFiniteLossError(RuntimeError):
  """Training kept producing non-finite losses or gradients after all recovery trials."""


def kernel_l2(model) -> tf.Tensor:
  """Sum of 0.5 * ||w||^2 over conv/dense kernels (no biases, BN or fusion weights)."""
  kernels = [v for v in model.trainable_variables if "kernel" in v.name.split("/")[-1]]
  return tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])


class Trainer:
  """Owns the distributed train step; `loss_fn(model, batch, training) -> dict` with "total".

  `ema` (a WeightAverage) is updated after every step inside the compiled loop.
  `jit_compile` compiles the per-replica step with XLA (the iterator stays outside it).
  A keras `LossScaleOptimizer` (mixed_float16) gets its loss scaled and gradients unscaled;
  it skips overflowing steps itself, so then only a non-finite loss counts as a bad step.
  `backbone_variables` (with a backbone optimizer attached to `optimizer`, see
  training/optimizer.py): those variables' gradients go to the backbone optimizer, the
  others' to `optimizer`; clipping stays global over all of them.
  """

  METRICS = ("total", "class", "box", "weight_decay", "grad_norm")  # detection's

  def __init__(self, strategy: tf.distribute.Strategy, model, optimizer, loss_fn,
               weight_decay: float, clip_norm: float, ema=None, jit_compile: bool = False,
               loss_parts: tuple = ("class", "box"), backbone_variables=None):
    """loss_parts: the keys of loss_fn's dict (besides "total") logged and summarised; a
    task's `loss_parts` (detection: class, box)."""
    self.loss_parts = tuple(loss_parts)
    self.strategy, self.model, self.optimizer = strategy, model, optimizer
    self.backbone_optimizer = backbone_optimizer_of(optimizer)
    if (self.backbone_optimizer is None) != (backbone_variables is None):
      raise ValueError("A backbone optimizer (OptimizerConfig.backbone_learning_rate_"
                       "multiplier != 1) needs the backbone's variables, and they need it.")
    backbone = {v.ref() for v in backbone_variables or ()}
    # Per trainable variable (in model.trainable_variables' order): the backbone's or not.
    self._in_backbone = [v.ref() in backbone for v in model.trainable_variables]
    self.loss_fn, self.weight_decay, self.clip_norm = loss_fn, weight_decay, clip_norm
    self.ema = ema
    self.stopped = False  # run_training stopped on request (this worker's or another's)
    self._loss_scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    self._step = tf.function(self._replica_step, jit_compile=True) if jit_compile \
        else self._replica_step
    with strategy.scope():
      names = ("total", *self.loss_parts, "weight_decay", "grad_norm")
      self.metrics = {name: keras.metrics.Mean(name) for name in names}
      # Slot variables now, not lazily in the first step: a checkpoint saved before the first
      # step must hold them, or a NaN recovery to it would keep the non-finite slots.
      if self.backbone_optimizer is None:
        _build_slots(optimizer, model.trainable_variables)
      else:
        head, backbone = self._split(model.trainable_variables)
        _build_slots(optimizer, head)
        _build_slots(self.backbone_optimizer, backbone)

  def _split(self, values) -> tuple[list, list]:
    """`values` (one per trainable variable) -> (the rest's, the backbone's)."""
    head = [x for x, inside in zip(values, self._in_backbone) if not inside]
    return head, [x for x, inside in zip(values, self._in_backbone) if inside]

  def _apply(self, grads: list, variables: list) -> None:
    """One optimizer for all variables, or the backbone's and the rest's."""
    if self.backbone_optimizer is None:
      self.optimizer.apply_gradients(zip(grads, variables),
                                     experimental_aggregate_gradients=False)
      return
    head_grads, backbone_grads = self._split(grads)
    if self._loss_scaled:
      # Each LossScaleOptimizer checks only the gradients it gets; NaN in one of each group
      # when any gradient is non-finite gives both the decision one optimizer would take (skip
      # the step, lower the scale), so their loss scales stay equal.
      finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
      poison = tf.where(finite, 0.0, float("nan"))
      head_grads[0] = head_grads[0] + tf.cast(poison, head_grads[0].dtype)
      backbone_grads[0] = backbone_grads[0] + tf.cast(poison, backbone_grads[0].dtype)
    head_vars, backbone_vars = self._split(variables)
    self.optimizer.apply_gradients(zip(head_grads, head_vars),
                                   experimental_aggregate_gradients=False)
    self.backbone_optimizer.apply_gradients(zip(backbone_grads, backbone_vars),
                                            experimental_aggregate_gradients=False)

  def _update_step(self, batch: dict) -> tf.Tensor:
    """Forward, backward, update; returns 1 if the loss and gradients were finite, else 0."""
    replicas = self.strategy.num_replicas_in_sync
    with tf.GradientTape() as tape:
      losses = self.loss_fn(self.model, batch, training=True)
      decay = self.weight_decay * kernel_l2(self.model)
      total = losses["total"] + decay
      scaled = total / replicas
      if self._loss_scaled:
        scaled = self.optimizer.get_scaled_loss(scaled)
    variables = self.model.trainable_variables
    grads = tape.gradient(scaled, variables)
    # Sum across replicas first, so clipping sees the global gradient norm.
    grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
    if self._loss_scaled:
      grads = self.optimizer.get_unscaled_gradients(grads)
    if self.clip_norm > 0:
      grads, grad_norm = tf.clip_by_global_norm(grads, self.clip_norm)
    else:
      grad_norm = tf.linalg.global_norm(grads)
    self._apply(list(grads), variables)
    parts = tuple((name, losses[name]) for name in self.loss_parts)
    for name, value in (("total", total), *parts, ("weight_decay", decay),
                        ("grad_norm", grad_norm)):
      self.metrics[name].update_state(value)
    finite = tf.math.is_finite(total)
    if not self._loss_scaled:
      finite = tf.logical_and(finite, tf.math.is_finite(grad_norm))
    return tf.cast(finite, tf.int32)

  def _replica_step(self, batch: dict):
    """Returns (1 if this replica's step was non-finite else 0, the batch's source-id codes)."""
    ids = batch.get("source_ids")
    if ids is None:
      ids = tf.zeros([0, SOURCE_ID_BYTES], tf.int32)
    elif ids.dtype == tf.string:
      raise TypeError(
          "Training batches must carry source_ids as int32 byte codes, not strings (strings "
          "cannot go to a TPU or through a GPU's distributed iterator): map them with "
          "detlab.data.source_id.encode_source_id in the input pipeline.")
    finite = self._update_step({k: v for k, v in batch.items() if k != "source_ids"})
    return 1 - finite, tf.reshape(ids, [-1, SOURCE_ID_BYTES])

  @tf.function
  def train_steps(self, iterator, num_steps: tf.Tensor):
    """Runs `num_steps` steps; returns (the first non-finite step, 1-based within this loop, 0
    if all were finite; that batch's source-id codes, int32 [n, SOURCE_ID_BYTES], n = 0 if
    none; `decode_source_ids` reads them).

    No step waits for the host: the loop runs all its steps even after a bad one (the weights
    are rolled back anyway), so the batches after the bad one in this loop are passed over too.
    """
    bad_step = tf.constant(0)
    bad_ids = tf.zeros([0, SOURCE_ID_BYTES], tf.int32)
    for i in tf.range(num_steps):
      tf.autograph.experimental.set_loop_options(
          shape_invariants=[(bad_ids, tf.TensorShape([None, SOURCE_ID_BYTES]))])
      bad, ids = self.strategy.run(self._step, args=(next(iterator),))
      failed = self.strategy.reduce(tf.distribute.ReduceOp.SUM, bad, axis=None)
      first = tf.logical_and(failed > 0, tf.equal(bad_step, 0))
      ids = tf.concat(self.strategy.experimental_local_results(ids), axis=0)
      # Dataflow selects, not a break: the loop condition stays the step counter alone.
      bad_ids = tf.cond(first, lambda: ids, lambda: bad_ids)  # pylint: disable=cell-var-from-loop
      bad_step = tf.where(first, i + 1, bad_step)
      if self.ema is not None:
        self.ema.update(self.optimizer.iterations)
    return bad_step, bad_ids

  def stop_agreed(self, requested: bool) -> bool:
    """Whether any worker requested a stop: `requested` is this process's own flag (SIGTERM).

    Called by every worker at the same points (after each loop of steps, after each
    evaluation), so all of them stop after the same step and save it: a scheduler signals one
    host at a time, and a worker that stopped alone would leave its peers in the next loop's
    all-reduce. One scalar all-reduce per loop, never per step; one process needs none (its
    replicas share the flag). TF's PreemptionCheckpointHandler would agree too, but it owns
    the save and the exit and wraps every step, so the loop's checkpoint keeper, NaN rollback
    and stoppable evaluations would have to go through it; this flag agrees the same thing.
    """
    replicas = self.strategy.num_replicas_in_sync
    if replicas == 1 or len(self.strategy.extended.worker_devices) == replicas:
      return requested  # one process: nothing to agree on
    return int(self._count_requests(tf.constant(int(requested)))) > 0

  @tf.function
  def _count_requests(self, requested: tf.Tensor) -> tf.Tensor:
    per_replica = self.strategy.run(tf.identity, args=(requested,))
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  def reset_metrics(self):
    for metric in self.metrics.values():
      metric.reset_state()

  def results(self) -> dict:
    return {name: float(metric.result()) for name, metric in self.metrics.items()}


def _build_slots(optimizer, variables) -> None:
  inner = innermost(optimizer)
  if isinstance(inner, keras.optimizers.legacy.Optimizer):
    # tfm builds these; their `build` is a no-op, `_create_all_weights` makes the slots.
    inner._create_all_weights(variables)  # pylint: disable=protected-access
  elif hasattr(inner, "build"):
    inner.build(variables)


def run_training(trainer: Trainer, iterator, *, start_step: int, total_steps: int,
                 steps_per_loop: int, global_batch: int, learning_rate, checkpoint,
                 checkpoint_every: int, summary_writer, log_every: int,
                 nan_trials: int = 3, stop_requested: Callable[[], bool] = lambda: False,
                 evaluate_every: int = 0, evaluate: Callable[[int], None] | None = None
                 ) -> dict:
  """Runs steps start_step..total_steps, logging, writing summaries and saving checkpoints.

  Non-finite loss or gradient: after the loop of steps, logs the first bad batch's
  source_ids, restores the last checkpoint (all but the input position) and goes on, at most `nan_trials` times in a row, then raises
  NonFiniteLossError. `stop_requested()` (e.g. SIGTERM) is checked after every loop and agreed
  with the other workers (`Trainer.stop_agreed`): then every worker saves a checkpoint of the
  same step and returns early, with `trainer.stopped` set; so after an evaluation that a stop
  cut short. `evaluate(step)` runs every
  `evaluate_every` steps (0: never) after the checkpoint of that step.
  """
  step = start_step
  progress = Progress(total_steps, unit="steps", start=start_step, min_interval=0)
  last_log, last_save, results, trials = step, step, {}, 0
  if checkpoint.latest() is None:
    checkpoint.save(step)  # something to go back to if the first steps are non-finite
  while step < total_steps:
    n = min(steps_per_loop, total_steps - step,
            checkpoint_every - step % checkpoint_every, log_every - step % log_every)
    if evaluate_every > 0:
      n = min(n, evaluate_every - step % evaluate_every)
    bad_step, bad_ids = trainer.train_steps(iterator, tf.constant(n))
    if int(bad_step):  # decided once per loop, after it
      step = _recover(trainer, checkpoint, step + int(bad_step), bad_ids, trials, nan_trials)
      trials += 1
      last_log = last_save = step
      continue
    trials = 0
    step += n
    if step - last_log >= log_every or step == total_steps:
      results = trainer.results()
      trainer.reset_metrics()
      lr = float(learning_rate(step))
      progress.update(step, prefix="train ", force=True, suffix=lambda p: (
          f" | loss {results['total']:.4f} ({_parts(results, trainer.loss_parts)}) lr "
          f"{lr:.5f} {p.rate * global_batch:.1f} img/s"))
      with summary_writer.as_default(step=step):
        for name, value in results.items():
          tf.summary.scalar(f"loss/{name}" if name != "grad_norm" else name, value)
        tf.summary.scalar("learning_rate", lr)
      last_log = step
    stop = trainer.stop_agreed(stop_requested())
    if step - last_save >= checkpoint_every or step == total_steps or stop:
      path = checkpoint.save(step)
      logging.info("Saved %s", path)
      last_save = step
    if stop:
      trainer.stopped = True
      logging.warning("Stopped at step %d of %d on request%s; the same command resumes.",
                      step, total_steps, "" if stop_requested() else " of another worker")
      break
    # The caller evaluates the final step itself.
    if evaluate is not None and evaluate_every > 0 and step % evaluate_every == 0 and \
        step < total_steps:
      evaluate(step)  # stops early (returning None) when a stop is requested meanwhile
      if trainer.stop_agreed(stop_requested()):
        trainer.stopped = True
        if last_save != step:
          logging.info("Saved %s", checkpoint.save(step))
        logging.warning("Stopped at step %d of %d on request (during the evaluation); the "
                        "same command resumes.", step, total_steps)
        break
  return results


def _recover(trainer: Trainer, checkpoint, bad_step: int, bad_ids: tf.Tensor, trials: int,
             nan_trials: int) -> int:
  """Logs the non-finite step, restores the last checkpoint; returns its step."""
  ids = decode_source_ids(bad_ids.numpy())
  what = (f"Non-finite loss or gradient at step {bad_step} (batch source_ids: "
          f"{', '.join(ids) or 'unknown'}).")
  if trials >= nan_trials:
    raise NonFiniteLossError(
        f"{what} It happened {trials + 1} time(s) in a row (train.nan_trials = "
        f"{nan_trials}). Try a lower learning rate (OptimizerConfig.learning_rate_per_64), "
        "a longer warm-up (OptimizerConfig.warmup_epochs) or gradient clipping "
        "(OptimizerConfig.clip_norm), and check the data: python -m "
        "data_tools.validate_dataset --help")
  path = checkpoint.restore_for_recovery()
  trainer.reset_metrics()
  step = int(trainer.optimizer.iterations.numpy())
  logging.warning("%s Restored %s (step %d) and going on with the next batches (trial %d of "
                  "%d).", what, path, step, trials + 1, nan_trials)
  return step


def _parts(results: dict, names: tuple) -> str:
  """'class 0.1234 box 0.01234': detection's box loss is ~10x smaller, hence 5 digits."""
  return " ".join(f"{n} {results[n]:.{5 if n == 'box' else 4}f}" for n in names)
