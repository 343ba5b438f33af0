"""Exponential moving average (EMA) of the model weights, kept in the checkpoint.

shadow <- shadow - (1 - decay_t) * (shadow - weight) after every optimizer step, inside the
compiled train step (no host work). With `dynamic_decay` (the reference's choice, as in
`tf.train.ExponentialMovingAverage(num_updates=step)` and tfa's MovingAverage):
decay_t = min(decay, (1 + t) / (10 + t)), so early shadows follow the weights closely.

Averaged: trainable variables plus batch-norm moving statistics (the reference's TF1
`get_ema_vars`). Written here rather than with keras' `use_ema`, so the shadows are plain
checkpointed variables that evaluation swaps in and out (`swapped`).
"""
import contextlib
import dataclasses
from typing import Iterator

import gin
import tensorflow as tf


@gin.register(module="detlab.training")
@dataclasses.dataclass(frozen=True)
class EmaConfig:
  """EfficientDet recipe: EMA 0.9998 with the decay warm-up; evaluation uses the average."""
  enabled: bool = True
  decay: float = 0.9998
  dynamic_decay: bool = True   # decay_t = min(decay, (1 + t) / (10 + t))
  evaluate_average: bool = True  # evaluate (and keep the best checkpoint) on EMA weights

  def __post_init__(self):
    if not 0.0 <= self.decay < 1.0:
      raise ValueError(f"EmaConfig.decay must be in [0, 1), got {self.decay}; the recipe's "
                       "value is 0.9998.")


def averaged_variables(model) -> list[tf.Variable]:
  """Trainable variables + batch-norm moving mean/variance, in a fixed order."""
  stats = [v for v in model.non_trainable_variables
           if v.dtype.is_floating and "moving_" in v.name.split("/")[-1]]
  return list(model.trainable_variables) + stats


class WeightAverage:
  """Shadow copies of a model's weights; build inside `strategy.scope()`.

  Checkpoint `shadows` (a list of variables); not a tf.Module, so that the checkpoint does
  not hold a second reference to the model's own variables.
  """

  def __init__(self, model, config: EmaConfig = EmaConfig()):
    self.config = config
    self._strategy = tf.distribute.get_strategy()
    self._sources = averaged_variables(model)
    with tf.init_scope():
      self.shadows = [tf.Variable(v.read_value(), trainable=False,
                                  name=v.name.split(":")[0].replace("/", "_") + "_ema")
                      for v in self._sources]

  def decay_at(self, step: tf.Tensor) -> tf.Tensor:
    decay = tf.constant(self.config.decay, tf.float32)
    if self.config.dynamic_decay:
      t = tf.cast(step, tf.float32)
      decay = tf.minimum(decay, (1.0 + t) / (10.0 + t))
    return decay

  def update(self, step: tf.Tensor) -> None:
    """One EMA step after optimizer step `step`; call in cross-replica context."""
    one_minus = 1.0 - self.decay_at(step)

    def _move(shadow, value):
      return shadow.assign_sub(one_minus * (shadow - tf.cast(value, shadow.dtype)))

    extended = self._strategy.extended
    for shadow, source in zip(self.shadows, self._sources):
      extended.update(shadow, _move, args=(source,), group=False)

  def reset(self) -> None:
    """Shadows := current weights (after loading initial weights for fine-tuning)."""
    for shadow, source in zip(self.shadows, self._sources):
      shadow.assign(source.read_value())

  def _swap(self) -> None:
    for shadow, source in zip(self.shadows, self._sources):
      weight = tf.identity(source.read_value())
      source.assign(shadow.read_value())
      shadow.assign(weight)

  @contextlib.contextmanager
  def swapped(self) -> Iterator[None]:
    """Within the block the model holds the averaged weights; restored on exit."""
    self._swap()
    try:
      yield
    finally:
      self._swap()
