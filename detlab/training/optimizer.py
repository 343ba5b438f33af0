"""Optimizer and lr schedule, lr scaled by the global batch: SGD/Adam/RMSProp, linear
warm-up, then cosine decay (EfficientDet) or staircase exponential decay (EfficientNet,
TF-slim's Inception recipes).

Built with tfm's `official.modeling.optimization` (LinearWarmup + CosineDecayWithOffset /
ExponentialDecay with offset, RMSprop): nothing of our own.
"""
import dataclasses

import gin
from official.modeling import optimization


@gin.register(module="detlab.training")
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """EfficientDet recipe: lr 0.08 per 64 images, linear warm-up from 0.008, cosine to 0.

  `warmup_learning_rate` is an absolute lr, not scaled by the batch: google/automl's
  det_model_fn warms up from its `lr_warmup_init` (0.008) at any batch size while it scales
  `learning_rate` by batch / 64.

  `name` picks the update rule: "sgd" (with `momentum`, the paper's), "adam" (converges
  faster from scratch on short schedules, used by the CPU demo) or "rmsprop" (`rho` the
  decay, `momentum`, `epsilon`; the EfficientNet and Inception recipes).
  `decay`: "cosine" to 0 over the run, or "exponential": x `decay_rate` every
  `decay_epochs` epochs after the warm-up (`staircase`: in steps, as the recipes).
  `learning_rate_per_64` is the peak lr per 64 images (EfficientNet's 0.016 per 256 is 0.004).
  """
  name: str = "sgd"
  learning_rate_per_64: float = 0.08
  decay: str = "cosine"
  decay_epochs: float = 2.4
  decay_rate: float = 0.97
  staircase: bool = True
  rho: float = 0.9
  epsilon: float = 1e-3
  warmup_epochs: float = 1.0
  warmup_learning_rate: float = 0.008  # the lr at step 0 (automl's lr_warmup_init)
  momentum: float = 0.9
  weight_decay: float = 4e-5      # L2 on kernels only, added to the loss
  clip_norm: float = 10.0         # global-norm gradient clipping (0 disables)

  def peak_learning_rate(self, global_batch: int) -> float:
    return self.learning_rate_per_64 * global_batch / 64.0


def build_optimizer(config: OptimizerConfig, global_batch: int, total_steps: int,
                    warmup_steps: int, steps_per_epoch: float | None = None):
  """Returns (tf_keras optimizer, learning-rate schedule). steps_per_epoch: needed by
  decay='exponential' (its period is `decay_epochs` epochs)."""
  if config.name not in ("sgd", "adam", "rmsprop"):
    raise ValueError(f"OptimizerConfig.name must be 'sgd', 'adam' or 'rmsprop', got "
                     f"{config.name!r}.")
  if config.decay not in ("cosine", "exponential"):
    raise ValueError(f"OptimizerConfig.decay must be 'cosine' or 'exponential', got "
                     f"{config.decay!r}.")
  peak = config.peak_learning_rate(global_batch)
  rule = {"sgd": {"momentum": config.momentum}, "adam": {},
          "rmsprop": {"rho": config.rho, "momentum": config.momentum,
                      "epsilon": config.epsilon}}[config.name]
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  if config.decay == "cosine":
    decay = {"type": "cosine", "cosine": {
        "initial_learning_rate": peak, "decay_steps": max(1, total_steps - warmup_steps),
        "offset": warmup_steps}}
  else:
    if not steps_per_epoch:
      raise ValueError("OptimizerConfig.decay='exponential' needs steps_per_epoch "
                       "(Schedule.num_train_images / Schedule.batch_size).")
    decay = {"type": "exponential", "exponential": {
        "initial_learning_rate": peak,
        "decay_steps": max(1, int(round(config.decay_epochs * steps_per_epoch))),
        "decay_rate": config.decay_rate, "staircase": config.staircase,
        "offset": warmup_steps}}
  params = {"optimizer": {"type": config.name, config.name: rule}, "learning_rate": decay}
  if warmup_steps > 0:
    params["warmup"] = {"type": "linear", "linear": {
        "warmup_steps": warmup_steps, "warmup_learning_rate": config.warmup_learning_rate}}
  factory = optimization.OptimizerFactory(optimization.OptimizationConfig(params))
  schedule = factory.build_learning_rate()
  return factory.build_optimizer(schedule), schedule
