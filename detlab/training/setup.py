"""What a run is made of besides its task: the schedule, the strategy, the precision policy,
the optimizer for a schedule, the Trainer of a task, and the task the parsed gin config
names (`configured_task`, for tools that build the model as training does), and the
distributed training input."""
import contextlib
import dataclasses
import math

from absl import logging
import gin
import tf_keras as keras
import tensorflow as tf
from official.common import distribute_utils

from detlab.tasks.base import Task
from detlab.training.loop import Trainer
from detlab.training.optimizer import (OptimizerConfig, attach_backbone_optimizer,
                                       backbone_optimizer_of, build_optimizer)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# train()'s run settings that some tasks take over (Task.use_settings): README bindings
# from before train.task existed.
TASK_SETTINGS = ("label_map_file", "annotation_file", "coco_backend")
# The train() arguments that built a detector before train.task, and where they went.
REMOVED_ARGUMENTS = {"model_fn": "DetectionTask.model_fn",
                     "train_input": "DetectionTask.train_input",
                     "eval_input": "DetectionTask.eval_input",
                     "loss": "DetectionTask.loss",
                     "postprocess": "DetectionTask.postprocess_config"}


@gin.register(module="detlab.training")
@dataclasses.dataclass(frozen=True)
class Schedule:
  """How long and how often. Steps derive from epochs unless `train_steps` is set."""
  batch_size: int = 128               # global batch
  epochs: float = 300.0
  num_train_images: int = 117266      # COCO train2017 images with annotations
  train_steps: int | None = None
  steps_per_loop: int = 100
  log_every_steps: int = 100
  checkpoint_every_steps: int = 2000
  eval_every_steps: int = 0           # train_and_eval: also evaluate every N steps (0: at end)

  def __post_init__(self):
    # Caught here, at gin parse time, instead of as a ZeroDivisionError steps later.
    for name in ("batch_size", "num_train_images", "steps_per_loop", "log_every_steps",
                 "checkpoint_every_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"Schedule.{name} must be at least 1, got {getattr(self, name)}.")
    if self.eval_every_steps < 0:
      raise ValueError("Schedule.eval_every_steps must be >= 0 (0: evaluate at the end only), "
                       f"got {self.eval_every_steps}.")
    if self.train_steps is None and not self.epochs > 0:
      raise ValueError(f"Schedule.epochs must be > 0 (or set Schedule.train_steps), got "
                       f"{self.epochs}.")

  @property
  def total_steps(self) -> int:
    if self.train_steps:
      return self.train_steps
    return int(math.ceil(self.epochs * self.num_train_images / self.batch_size))

  def steps_for_epochs(self, epochs: float) -> int:
    return int(round(epochs * self.num_train_images / self.batch_size))


def get_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
  """'off' (default strategy), 'one_device', 'mirrored', 'multi_worker_mirrored', 'tpu'."""
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=name, num_gpus=len(tf.config.list_physical_devices("GPU")),
      tpu_address=tpu)


@contextlib.contextmanager
def precision_policy(policy: str):
  """Sets the keras dtype policy for the model build; restores the previous one after."""
  if policy not in PRECISIONS:
    raise ValueError(f"train.precision must be one of {PRECISIONS}, got {policy!r}.")
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def with_loss_scaling(opt, policy: str):
  """float16 needs dynamic loss scaling against gradient underflow; bfloat16 does not.

  A backbone optimizer attached to `opt` is wrapped too: the Trainer hands both the same
  skip decisions, so its loss scale always equals the main one's, which alone scales the
  loss."""
  if policy != "mixed_float16":
    return opt
  backbone = backbone_optimizer_of(opt)
  wrapped = keras.mixed_precision.LossScaleOptimizer(opt)
  if backbone is not None:
    backbone = keras.mixed_precision.LossScaleOptimizer(backbone)
    # The main optimizer scales the loss and unscales all gradients (keras would warn).
    backbone._loss_has_been_scaled = True  # pylint: disable=protected-access
    backbone._gradients_have_been_unscaled = True  # pylint: disable=protected-access
    attach_backbone_optimizer(wrapped, backbone)
  return wrapped


def schedule_optimizer(config: OptimizerConfig, schedule: Schedule, precision: str):
  """(optimizer, learning-rate schedule) for `schedule`'s global batch and steps, with loss
  scaling under mixed_float16: what train() trains with (and the benchmark times)."""
  opt, learning_rate = build_optimizer(
      config, schedule.batch_size, schedule.total_steps,
      schedule.steps_for_epochs(config.warmup_epochs),
      schedule.num_train_images / schedule.batch_size)
  return with_loss_scaling(opt, precision), learning_rate


def backbone_variables(model, multiplier: float) -> list:
  """The trainable variables of `model.backbone` (every task's model exposes its backbone
  there: detector, segmenter, joint model, classifier), which
  OptimizerConfig.backbone_learning_rate_multiplier slows down."""
  backbone = getattr(model, "backbone", None)
  binding = f"OptimizerConfig.backbone_learning_rate_multiplier = {multiplier}"
  if backbone is None:
    raise ValueError(f"{binding} needs a model with a `.backbone` sub-model, and "
                     f"{type(model).__name__} has none: remove the binding (1.0 trains all "
                     "variables at one rate).")
  variables = list(backbone.trainable_variables)
  if not variables or len(variables) == len(model.trainable_variables):
    raise ValueError(f"{binding}: {type(model).__name__}'s backbone has "
                     f"{len(variables)} of its {len(model.trainable_variables)} trainable "
                     "variables, so there is nothing to train at a different rate; remove "
                     "the binding.")
  return variables


def task_trainer(distribution, task: Task, model, opt, config: OptimizerConfig, average,
                 jit_compile: bool) -> Trainer:
  """The Trainer of `task`'s loss with the optimizer config's weight decay and clipping; with
  a backbone_learning_rate_multiplier != 1, `opt`'s backbone optimizer updates the backbone."""
  backbone = None
  if backbone_optimizer_of(opt) is not None:
    backbone = backbone_variables(model, config.backbone_learning_rate_multiplier)
    logging.info("Learning rate per group: %d backbone variables at x%g of the rate, the "
                 "other %d at x1 (OptimizerConfig.backbone_learning_rate_multiplier).",
                 len(backbone), config.backbone_learning_rate_multiplier,
                 len(model.trainable_variables) - len(backbone))
  return Trainer(distribution, model, opt, task.compute_loss, config.weight_decay,
                 config.clip_norm, ema=average, jit_compile=jit_compile,
                 loss_parts=task.loss_parts, backbone_variables=backbone)


def train_argument(name: str, default=None):
  """What `train()` receives as `name` from the parsed gin config (a `@Configurable()`
  reference called, as gin calls it; `@fn` the function itself), or `default` when unbound."""
  try:
    value = gin.query_parameter(f"train.{name}")
  except ValueError:  # not bound: train() uses its default
    return default
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  return value


def reject_removed(arguments) -> None:
  """A clear error for train() arguments that no longer exist: the legacy detection ones
  name their DetectionTask bindings (all of them at once)."""
  removed = [name for name in sorted(arguments) if name in REMOVED_ARGUMENTS]
  if removed:
    moves = ", ".join(f"train.{name} -> {REMOVED_ARGUMENTS[name]}" for name in removed)
    raise ValueError(f"{', '.join('train.' + n for n in removed)}: removed, detection is a "
                     f"task like the others. Bind `train.task = @DetectionTask()` and move "
                     f"them: {moves} (see efficientdet_d0.gin).")
  for name in sorted(arguments):
    raise ValueError(f"train() has no parameter {name!r}; see `python -m detlab.train "
                     "--helpfull` and the README's binding table.")


def resolve_task(task: Task | None, **settings) -> Task:
  """`train.task` with the run `settings` it takes over (Task.use_settings)."""
  if task is None:
    raise ValueError("train.task is not set: bind it (e.g. @DetectionTask(), "
                     "@ClassificationTask(), @SegmentationTask(), @JointTask()) or include "
                     "a gin file that does, such as efficientdet_d0.gin.")
  task.use_settings(**settings)
  return task


def configured_task() -> Task:
  """The task `train()` would run under the parsed gin config: for tools that build the
  model as training does."""
  removed = [name for name in REMOVED_ARGUMENTS if train_argument(name) is not None]
  reject_removed(removed)
  return resolve_task(train_argument("task"),
                      **{k: train_argument(k) for k in TASK_SETTINGS})


def input_checkpointable(iterator) -> bool:
  """Plain tf.data iterators (the default strategy's) are; distributed ones are not."""
  try:
    tf.train.Checkpoint(iterator=iterator)
  except (TypeError, ValueError):
    return False
  return True


def train_dataset(distribution, task: Task, model, schedule: Schedule, seed,
                  start_step: int = 0):
  """`task.train_dataset` per replica of `distribution` (a distributed dataset), the stream
  starting at `start_step` (a resumed run whose checkpoint holds no input position)."""
  replicas = distribution.num_replicas_in_sync
  if schedule.batch_size % replicas:
    raise ValueError(f"Global batch {schedule.batch_size} is not divisible by the "
                     f"{replicas} replicas.")
  # Flip and scale jitter + crop draw stateless randomness from a per-example seed that the
  # iterator checkpoint holds, so resume is exact with the default transforms. AutoAugment,
  # RandAugment and Mosaic still use stateful random ops (tfm's ops do), whose state a
  # checkpoint cannot hold: save the position anyway and let those draw fresh randomness.
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return distribution.distribute_datasets_from_function(
      lambda ctx: task.train_dataset(model, ctx,
                                     ctx.get_per_replica_batch_size(schedule.batch_size),
                                     seed, start_step).with_options(options))
