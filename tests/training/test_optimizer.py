"""The learning-rate schedule of the EfficientDet recipe: linear warm-up from google/automl's
fixed `lr_warmup_init` (0.008, hparams_config; det_model_fn uses it unscaled by the batch) to
0.08 x batch / 64, then cosine to 0."""
import math

import gin
import pytest

from detlab import config
from detlab.training.optimizer import OptimizerConfig, build_optimizer


@pytest.mark.parametrize("batch", [8, 64, 128])
def test_warmup_starts_at_the_reference_0p008_at_any_batch(batch: int) -> None:
  _, schedule = build_optimizer(OptimizerConfig(), global_batch=batch, total_steps=1000,
                                warmup_steps=100)
  peak = 0.08 * batch / 64
  assert float(schedule(0)) == pytest.approx(0.008)
  assert float(schedule(50)) == pytest.approx(0.008 + 0.5 * (peak - 0.008))
  assert float(schedule(100)) == pytest.approx(peak)
  # Cosine after the warm-up: half-way through the decay, half the peak.
  assert float(schedule(550)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_recipe_gin_keeps_the_reference_warmup_init() -> None:
  gin.clear_config()
  try:
    config.parse_gin(["efficientdet_d0.gin"], [])
    recipe = gin.query_parameter("train.optimizer").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert recipe.warmup_learning_rate == 0.008 and recipe.learning_rate_per_64 == 0.08


@pytest.mark.parametrize("field", ["checkpoint_every_steps", "steps_per_loop",
                                   "log_every_steps", "batch_size"])
def test_a_schedule_with_a_zero_interval_is_refused_when_configured(field):
  """checkpoint_every_steps = 0 used to pass and fail later with ZeroDivisionError."""
  from detlab.training.experiment import Schedule  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=f"Schedule.{field} must be at least 1"):
    Schedule(**{field: 0})
