"""The training step as `train()` would run it for the parsed gin config: its task, optimizer
(lr scaled to the measured batch), weight decay, clipping, EMA and jit_compile, put together
as training/experiment.py's `_run` does, so the benchmark times the step real training runs."""
import dataclasses
import numbers

import tensorflow as tf

from detlab.training.ema import EmaConfig, WeightAverage
from detlab.training.setup import (Schedule, precision_policy, schedule_optimizer,
                                   task_trainer, train_argument)
from detlab.training.optimizer import OptimizerConfig, innermost


def optimizer_for_batch(batch: int, precision: str = "float32"):
  """(the gin's OptimizerConfig, a fresh optimizer built from it as train() builds it, with
  the schedule's steps and the lr scaled to a global batch of `batch`)."""
  config = train_argument("optimizer", OptimizerConfig())
  schedule = dataclasses.replace(train_argument("schedule", Schedule()), batch_size=batch)
  optimizer, _ = schedule_optimizer(config, schedule, precision)
  return config, optimizer


def describe_optimizer(optimizer) -> str:
  """'rmsprop rho=0.9 momentum=0.9 epsilon=0.001': the update rule and its settings."""
  config = innermost(optimizer).get_config()
  # Hyperparameters read back as numpy scalars once the optimizer has built its slots.
  settings = [f"{k}={float(config[k]):g}" for k in ("rho", "momentum", "epsilon", "beta_1",
                                                    "beta_2")
              if isinstance(config.get(k), numbers.Real) and not isinstance(config[k], bool)]
  return " ".join([str(config["name"]).lower(), *settings])


def build_trainer(task, model, batch: int, precision: str = "float32"):
  """(the Trainer `train()` builds for `task` and `model` at global batch `batch`, a one-line
  description of its step). Call after the model is built, under the default strategy."""
  config, optimizer = optimizer_for_batch(batch, precision)
  ema = train_argument("ema", EmaConfig())
  with precision_policy(precision):
    average = WeightAverage(model, ema) if ema.enabled else None
  jit = bool(train_argument("jit_compile", False))
  trainer = task_trainer(tf.distribute.get_strategy(), task, model, optimizer, config, average,
                         jit)
  clip = f"clip {config.clip_norm:g}" if config.clip_norm > 0 else "no clipping"
  parts = [f"detlab Trainer: {describe_optimizer(optimizer)}",
           f"weight decay {config.weight_decay:g}", clip,
           f"EMA {ema.decay:g}" if average else "no EMA"] + (["XLA"] if jit else [])
  return trainer, ", ".join(parts)
