"""EfficientNetV2 progressive learning (Tan & Le 2021, Sec. 4.2 and Algorithm 1): training is
cut into M equal stages; stage k = 0..M-1 trains at image size, RandAugment magnitude,
Mixup/CutMix alpha and dropout rate each linear in k, from a minimum (the first stage) to the
recipe's values (the last stage): value_k = min + (max - min) * k / (M - 1).

google/automl's efficientnetv2 (main.py with `train.stages = 4`, `train.sched`) uses the same
RandAugment (5 -> ram) and Mixup/CutMix (0 -> alpha) ramps, but a different size ramp,
ibase + (train_size - ibase) * (k + 1) / M (its first stage is not at ibase 128), and leaves
its dropout ramp disabled; this module follows the paper's Algorithm 1 (first stage at the
minimum) and ramps the dropout from 0.1 as the paper's Table 6 does.

One training stream: the M stages' input pipelines concatenated, stage k holding exactly its
steps' batches, so the position of the tf.data iterator (which the checkpoint holds) says
which stage a resumed run is in and where in it. A stream built for `start_step` > 0 (a
resume without the iterator in the checkpoint) begins in the stage of that step. Each batch
carries "dropout_rate" [B] (the stage's), which ClassificationTask hands to the classifier's
ScheduledDropout, so the rate follows the stage without retracing the train step. Batches
of different stages differ in size: the stream's element spec is [B, None, None, 3] and the
train step is traced once.
"""
import dataclasses
from typing import Callable

import gin
import tensorflow as tf


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class ProgressiveConfig:
  """The first stage's values (the last stage's are the recipe's: the task's image_size, the
  train input's RandAugment magnitude and alphas, the classifier's dropout rate)."""
  num_stages: int = 4
  min_image_size: int = 128
  min_randaugment_magnitude: float = 5.0
  min_mix_alpha: float = 0.0
  min_dropout_rate: float = 0.1
  # The run's schedule (bind the same @Schedule() as train.schedule): stages split its steps.
  schedule: object = None  # a detlab.training.Schedule (not imported: no import cycle)
  total_steps: int | None = None  # or the total number of steps directly

  def __post_init__(self):
    if self.num_stages < 1:
      raise ValueError(f"ProgressiveConfig.num_stages must be >= 1, got {self.num_stages}.")
    if self.schedule is None and not self.total_steps:
      raise ValueError("ProgressiveConfig needs the run's length: bind "
                       "ProgressiveConfig.schedule = @Schedule() (the same as train.schedule) "
                       "or ProgressiveConfig.total_steps.")

  @property
  def steps(self) -> int:
    return self.total_steps or self.schedule.total_steps


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: steps [first_step, end_step) (end_step None: the last, endless) and its values."""
  index: int
  first_step: int
  end_step: int | None
  image_size: int
  randaugment_magnitude: float
  mixup_alpha: float
  cutmix_alpha: float
  dropout_rate: float


def _ramp(low: float, high: float, k: int, num: int) -> float:
  return high if num == 1 else low + (high - low) * k / (num - 1)


def progressive_stages(config: ProgressiveConfig, image_size: int, randaugment_magnitude: float,
                       mixup_alpha: float, cutmix_alpha: float,
                       dropout_rate: float) -> list[Stage]:
  """The M stages for final values (image_size, ...); stage k starts at step k * T // M.
  Image sizes are truncated to integers (as the reference code's int())."""
  total, num = config.steps, config.num_stages
  if total < num:
    raise ValueError(f"Progressive learning needs at least one step per stage: {total} "
                     f"step(s) for ProgressiveConfig.num_stages = {num}.")
  if config.min_image_size > image_size:
    raise ValueError(f"ProgressiveConfig.min_image_size {config.min_image_size} is larger "
                     f"than the final training image size {image_size}.")
  stages = []
  for k in range(num):
    stages.append(Stage(
        index=k, first_step=k * total // num,
        end_step=None if k == num - 1 else (k + 1) * total // num,
        image_size=int(_ramp(config.min_image_size, image_size, k, num)),
        randaugment_magnitude=_ramp(config.min_randaugment_magnitude, randaugment_magnitude,
                                    k, num),
        mixup_alpha=_ramp(min(config.min_mix_alpha, mixup_alpha), mixup_alpha, k, num),
        cutmix_alpha=_ramp(min(config.min_mix_alpha, cutmix_alpha), cutmix_alpha, k, num),
        dropout_rate=_ramp(min(config.min_dropout_rate, dropout_rate), dropout_rate, k, num)))
  return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
  """The stage that trains step `step` (0-based; steps past the end are the last stage's)."""
  return next(s for s in stages if s.end_step is None or step < s.end_step)


def _with_stage_keys(batch: dict, stage: Stage, mixing: bool) -> dict:
  """Adds "dropout_rate" [B]; where other stages mix and this one does not, the identity mix
  (mix_labels = labels, weight 1), so every stage's batches have the same keys."""
  batch = dict(batch)
  size = tf.shape(batch["labels"])[:1]
  batch["dropout_rate"] = tf.fill(size, tf.constant(stage.dropout_rate, tf.float32))
  if mixing and "mix_weight" not in batch:
    batch["mix_labels"] = batch["labels"]
    batch["mix_weight"] = tf.ones(size, tf.float32)
  return batch


def progressive_dataset(stages: list[Stage], stage_dataset: Callable[[Stage, int | None],
                                                                     tf.data.Dataset],
                        seed: int | None = None, start_step: int = 0) -> tf.data.Dataset:
  """The stages' batches in order from `start_step`: `stage_dataset(stage, seed)` gives one
  stage's endless batches (one per step); stage k's seed is seed + 1000 k (+ the steps a
  resume skips, so a resumed stage does not replay the batches it already trained on)."""
  mixing = any(s.mixup_alpha > 0 or s.cutmix_alpha > 0 for s in stages)
  first = stage_at(stages, start_step)
  dataset = None
  for stage in stages[first.index:]:
    skipped = start_step - stage.first_step if stage is first else 0
    stage_seed = None if seed is None else seed + 1000 * stage.index + skipped
    part = stage_dataset(stage, stage_seed)
    if stage.end_step is not None:
      part = part.take(stage.end_step - stage.first_step - skipped)
    part = part.map(lambda b, s=stage: _with_stage_keys(b, s, mixing))
    dataset = part if dataset is None else dataset.concatenate(part)
  return dataset.prefetch(tf.data.AUTOTUNE)
