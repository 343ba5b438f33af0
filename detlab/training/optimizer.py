"""Optimizer and lr schedule, lr scaled by the global batch: SGD/Adam/RMSProp, linear
warm-up, then cosine decay (EfficientDet) or staircase exponential decay (EfficientNet,
TF-slim's Inception recipes).

Built with tfm's `official.modeling.optimization` (LinearWarmup + CosineDecayWithOffset /
ExponentialDecay with offset, RMSprop): nothing of our own.

A per-group rate for fine-tuning (`backbone_learning_rate_multiplier`, detectron2's backbone
multiplier, mmdet's paramwise lr_mult): a second optimizer of the same rule whose schedule is
the main one times the multiplier updates the backbone's variables, the main one the rest.
A second optimizer, not scaled gradients: Adam and RMSProp divide the gradient's scale out,
so only the rate itself slows them. It is a checkpoint dependency of the main optimizer
(`backbone_optimizer`), so whatever saves or restores the optimizer holds both.
"""
import dataclasses

import gin
import tf_keras as keras
from official.modeling import optimization

BACKBONE_OPTIMIZER = "backbone_optimizer"  # its name in the main optimizer's checkpoint node


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
  `backbone_learning_rate_multiplier`: the backbone's variables train at this fraction of
  the rate (warm-up and decay included), the rest (BiFPN, heads) at the full rate: for a
  start from a pretrained backbone (train.init_checkpoint, init_mode='backbone'). 1.0: one
  optimizer for everything, exactly as without it.
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
  backbone_learning_rate_multiplier: float = 1.0

  def __post_init__(self):
    if not self.backbone_learning_rate_multiplier >= 0:
      raise ValueError("OptimizerConfig.backbone_learning_rate_multiplier must be >= 0 (1.0: "
                       f"the backbone trains at the full rate), got "
                       f"{self.backbone_learning_rate_multiplier}.")

  def peak_learning_rate(self, global_batch: int) -> float:
    return self.learning_rate_per_64 * global_batch / 64.0


def build_optimizer(config: OptimizerConfig, global_batch: int, total_steps: int,
                    warmup_steps: int, steps_per_epoch: float | None = None):
  """Returns (tf_keras optimizer, learning-rate schedule). steps_per_epoch: needed by
  decay='exponential' (its period is `decay_epochs` epochs). With a
  backbone_learning_rate_multiplier != 1 the optimizer carries the backbone's optimizer
  (`backbone_optimizer_of`), the same rule on the schedule times the multiplier."""
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
  optimizer = factory.build_optimizer(schedule)
  multiplier = config.backbone_learning_rate_multiplier
  if multiplier != 1.0:
    attach_backbone_optimizer(optimizer,
                              factory.build_optimizer(ScaledSchedule(schedule, multiplier)))
  return optimizer, schedule


class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """`schedule(step) * multiplier`: the backbone's rate, warm-up and decay included."""

  def __init__(self, schedule, multiplier: float):
    super().__init__()
    self.schedule, self.multiplier = schedule, float(multiplier)

  def __call__(self, step):
    return self.schedule(step) * self.multiplier

  def get_config(self) -> dict:
    return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
            "multiplier": self.multiplier}

  @classmethod
  def from_config(cls, config: dict):
    return cls(keras.optimizers.schedules.deserialize(config["schedule"]),
               config["multiplier"])


def innermost(optimizer):
  """The optimizer itself, or the one a LossScaleOptimizer (mixed_float16) wraps."""
  return getattr(optimizer, "inner_optimizer", optimizer)


def attach_backbone_optimizer(optimizer, backbone_optimizer) -> None:
  """Makes `backbone_optimizer` the backbone's optimizer of `optimizer` and a checkpoint
  dependency of it (replacing an earlier one), so saving or restoring `optimizer` saves or
  restores both, slots and steps."""
  inner = innermost(optimizer)
  inner._track_trackable(backbone_optimizer, name=BACKBONE_OPTIMIZER,  # pylint: disable=protected-access
                         overwrite=True)
  inner._detlab_backbone_optimizer = backbone_optimizer  # pylint: disable=protected-access


def backbone_optimizer_of(optimizer):
  """The optimizer of the backbone's variables attached to `optimizer`, or None (one
  optimizer for all variables: backbone_learning_rate_multiplier = 1)."""
  return getattr(innermost(optimizer), "_detlab_backbone_optimizer", None)
