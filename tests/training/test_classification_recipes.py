"""The classification recipe gin files build the papers' optimizers and schedules."""
import gin
import pytest

from detlab import config
from detlab.training.optimizer import build_optimizer


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _optimizer(gin_file, batch=None):
  config.parse_gin([gin_file], [] if batch is None else [f"Schedule.batch_size = {batch}"])
  schedule = gin.query_parameter("train.schedule").scoped_configurable_fn()
  opt_config = gin.query_parameter("train.optimizer").scoped_configurable_fn()
  steps_per_epoch = schedule.num_train_images / schedule.batch_size
  opt, lr = build_optimizer(opt_config, schedule.batch_size, schedule.total_steps,
                            schedule.steps_for_epochs(opt_config.warmup_epochs), steps_per_epoch)
  return opt.get_config(), lr, steps_per_epoch, schedule


def test_efficientnet_b0_recipe():
  """RMSProp 0.9/0.9/1e-3, 0.016 x 2048/256 = 0.128 after 5 warm-up epochs, x0.97 per 2.4
  epochs (staircase), 350 epochs, EMA 0.9999, label smoothing 0.1."""
  opt, lr, per_epoch, schedule = _optimizer("classification_efficientnet_b0.gin")
  assert (opt["rho"], opt["momentum"], opt["epsilon"]) == (0.9, 0.9, 1e-3)
  warmup = round(5 * per_epoch)
  assert float(lr(warmup // 2)) == pytest.approx(0.128 * (warmup // 2) / warmup, rel=1e-5)
  decay = round(2.4 * per_epoch)
  assert float(lr(warmup + 3 * decay + 1)) == pytest.approx(0.128 * 0.97**3, rel=1e-5)
  assert float(lr(warmup + decay - 1)) == pytest.approx(0.128, rel=1e-5)  # staircase
  assert schedule.epochs == 350
  assert gin.query_parameter("EmaConfig.decay") == 0.9999
  assert gin.query_parameter("ClassificationTask.label_smoothing") == 0.1
  assert gin.query_parameter("classifier.drop_connect_rate") == 0.2
  assert gin.query_parameter("%BN_MOMENTUM") == 0.99


def test_efficientnetv2_m_recipe_keeps_the_family_optimizer_with_its_own_bn_and_mixing():
  opt, _, _, _ = _optimizer("classification_efficientnetv2_m.gin")
  assert (opt["rho"], opt["momentum"], opt["epsilon"]) == (0.9, 0.9, 1e-3)
  assert gin.query_parameter("%BN_MOMENTUM") == 0.9
  assert gin.query_parameter("train/ClassificationInputConfig.mixup_alpha") == 0.2
  assert gin.query_parameter("train/ClassificationInputConfig.augment") == "randaugment"


def test_inception_v3_recipe_is_tf_slims():
  """RMSProp 0.9/0.9/epsilon 1.0, lr 0.01 at batch 32, x0.94 every 2 epochs, no warm-up."""
  opt, lr, per_epoch, _ = _optimizer("classification_inception_v3.gin")
  assert (opt["rho"], opt["momentum"], opt["epsilon"]) == (0.9, 0.9, 1.0)
  assert float(lr(0)) == pytest.approx(0.01)
  assert float(lr(round(2 * per_epoch) * 5 + 1)) == pytest.approx(0.01 * 0.94**5, rel=1e-5)
  assert gin.query_parameter("ClassificationTask.label_smoothing") == 0.1
  assert gin.query_parameter("OptimizerConfig.weight_decay") == 4e-5


def test_every_backbone_has_its_recipe():
  from detlab.backbones import BACKBONES
  assert all(f"classification_{name}.gin" in config.available_gin_files() for name in BACKBONES)
