"""The training loop: several steps per tf.function call under any tf.distribute strategy.

Losses are computed per replica and scaled by 1 / num_replicas, so gradients summed across
replicas equal the gradient of the global mean.
"""

from absl import logging
import tensorflow as tf
import tf_keras as keras

from detlab.progress import Progress


def kernel_l2(model) -> tf.Tensor:
  """Sum of 0.5 * ||w||^2 over conv/dense kernels (no biases, BN or fusion weights)."""
  kernels = [v for v in model.trainable_variables if "kernel" in v.name.split("/")[-1]]
  return tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])


class Trainer:
  """Owns the distributed train step; `loss_fn(model, batch, training) -> dict` with "total"."""

  METRICS = ("total", "class", "box", "weight_decay", "grad_norm")

  def __init__(self, strategy: tf.distribute.Strategy, model, optimizer, loss_fn,
               weight_decay: float, clip_norm: float):
    self.strategy, self.model, self.optimizer = strategy, model, optimizer
    self.loss_fn, self.weight_decay, self.clip_norm = loss_fn, weight_decay, clip_norm
    with strategy.scope():
      self.metrics = {name: keras.metrics.Mean(name) for name in self.METRICS}

  def _replica_step(self, batch):
    replicas = self.strategy.num_replicas_in_sync
    with tf.GradientTape() as tape:
      losses = self.loss_fn(self.model, batch, training=True)
      decay = self.weight_decay * kernel_l2(self.model)
      total = losses["total"] + decay
      scaled = total / replicas
    variables = self.model.trainable_variables
    grads = tape.gradient(scaled, variables)
    # Sum across replicas first, so clipping sees the global gradient norm.
    grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
    if self.clip_norm > 0:
      grads, grad_norm = tf.clip_by_global_norm(grads, self.clip_norm)
    else:
      grad_norm = tf.linalg.global_norm(grads)
    self.optimizer.apply_gradients(zip(grads, variables),
                                   experimental_aggregate_gradients=False)
    for name, value in (("total", total), ("class", losses["class"]), ("box", losses["box"]),
                        ("weight_decay", decay), ("grad_norm", grad_norm)):
      self.metrics[name].update_state(value)

  @tf.function
  def train_steps(self, iterator, num_steps: tf.Tensor):
    for _ in tf.range(num_steps):
      self.strategy.run(self._replica_step, args=(next(iterator),))

  def reset_metrics(self):
    for metric in self.metrics.values():
      metric.reset_state()

  def results(self) -> dict:
    return {name: float(metric.result()) for name, metric in self.metrics.items()}


def run_training(trainer: Trainer, iterator, *, start_step: int, total_steps: int,
                 steps_per_loop: int, global_batch: int, learning_rate, checkpoint,
                 checkpoint_every: int, summary_writer, log_every: int) -> dict:
  """Runs steps start_step..total_steps, logging, writing summaries and saving checkpoints."""
  step = start_step
  progress = Progress(total_steps, unit="steps", start=start_step, min_interval=0)
  last_log, last_save, results = step, step, {}
  while step < total_steps:
    n = min(steps_per_loop, total_steps - step,
            checkpoint_every - step % checkpoint_every, log_every - step % log_every)
    trainer.train_steps(iterator, tf.constant(n))
    step += n
    if step - last_log >= log_every or step == total_steps:
      results = trainer.results()
      trainer.reset_metrics()
      lr = float(learning_rate(step))
      progress.update(step, prefix="train ", force=True, suffix=lambda p: (
          f" | loss {results['total']:.4f} (class {results['class']:.4f} box "
          f"{results['box']:.5f}) lr {lr:.5f} {p.rate * global_batch:.1f} img/s"))
      with summary_writer.as_default(step=step):
        for name, value in results.items():
          tf.summary.scalar(f"loss/{name}" if name != "grad_norm" else name, value)
        tf.summary.scalar("learning_rate", lr)
      last_log = step
    if step - last_save >= checkpoint_every or step == total_steps:
      path = checkpoint.save(step)
      logging.info("Saved %s", path)
      last_save = step
  return results
