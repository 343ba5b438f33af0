"""SGD with momentum, linear warm-up and cosine decay, lr scaled by the global batch.

Built with tfm's `official.modeling.optimization` (LinearWarmup + CosineDecayWithOffset).
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

  `name` picks the update rule: "sgd" (with `momentum`, the paper's) or "adam" (converges
  faster from scratch on short schedules, used by the CPU demo).
  """
  name: str = "sgd"
  learning_rate_per_64: float = 0.08
  warmup_epochs: float = 1.0
  warmup_learning_rate: float = 0.008  # the lr at step 0 (automl's lr_warmup_init)
  momentum: float = 0.9
  weight_decay: float = 4e-5      # L2 on kernels only, added to the loss
  clip_norm: float = 10.0         # global-norm gradient clipping (0 disables)

  def peak_learning_rate(self, global_batch: int) -> float:
    return self.learning_rate_per_64 * global_batch / 64.0


def build_optimizer(config: OptimizerConfig, global_batch: int, total_steps: int,
                    warmup_steps: int):
  """Returns (tf_keras optimizer, learning-rate schedule)."""
  if config.name not in ("sgd", "adam"):
    raise ValueError(f"OptimizerConfig.name must be 'sgd' or 'adam', got {config.name!r}.")
  peak = config.peak_learning_rate(global_batch)
  rule = {"sgd": {"momentum": config.momentum}, "adam": {}}[config.name]
  warmup_steps = max(0, min(warmup_steps, total_steps - 1))
  params = {
      "optimizer": {"type": config.name, config.name: rule},
      "learning_rate": {"type": "cosine", "cosine": {
          "initial_learning_rate": peak, "decay_steps": max(1, total_steps - warmup_steps),
          "offset": warmup_steps}},
  }
  if warmup_steps > 0:
    params["warmup"] = {"type": "linear", "linear": {
        "warmup_steps": warmup_steps, "warmup_learning_rate": config.warmup_learning_rate}}
  factory = optimization.OptimizerFactory(optimization.OptimizationConfig(params))
  schedule = factory.build_learning_rate()
  return factory.build_optimizer(schedule), schedule
