"""Dropout whose rate a training step sets (EfficientNetV2 progressive learning: the rate
grows stage by stage, Tan & Le 2021, Algorithm 1).

Keras' Dropout bakes its rate into the traced step; progressive learning changes the rate
between stages and the train step is traced once. So the rate comes with the batch: the task
calls the model inside `scheduled_dropout_rate(model, rate)` with the batch's rate tensor,
which every ScheduledDropout layer of the model reads while the step is traced (it is a
tensor of that same step's graph, no variable, nothing in the checkpoint). Outside that
context (evaluation, export, a plain run) the layer is keras Dropout at its final `rate`.
"""
import contextlib

import tensorflow as tf
import tf_keras as keras


class ScheduledDropout(keras.layers.Dropout):
  """keras Dropout at `rate`, or at the rate `scheduled_dropout_rate` sets in training."""

  def __init__(self, rate: float, **kwargs):
    super().__init__(rate, **kwargs)
    object.__setattr__(self, "_scheduled_rate", None)  # a tensor, not tracked by keras

  def call(self, inputs, training=None):
    rate = getattr(self, "_scheduled_rate", None)
    if rate is None or not training:
      return super().call(inputs, training=training)
    return tf.nn.dropout(inputs, rate=tf.cast(rate, inputs.dtype))


def scheduled_dropout_layers(model: keras.Model) -> list:
  """Every ScheduledDropout in `model` (nested models included)."""
  return [layer for layer in model.submodules if isinstance(layer, ScheduledDropout)]


@contextlib.contextmanager
def scheduled_dropout_rate(model: keras.Model, rate):
  """Within the block, `model`'s ScheduledDropout layers drop at `rate` (a scalar or a [B]
  tensor of one repeated value, as the progressive input's "dropout_rate"); None: no change."""
  layers = scheduled_dropout_layers(model) if rate is not None else []
  if rate is not None and rate.shape.rank:
    rate = rate[0]
  for layer in layers:
    object.__setattr__(layer, "_scheduled_rate", rate)
  try:
    yield
  finally:
    for layer in layers:
      object.__setattr__(layer, "_scheduled_rate", None)
