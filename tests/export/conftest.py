"""A model_dir as training leaves it (config.gin, ckpt-N with EMA shadows), D0 at 128 px."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import api
from detlab.export import runners
from detlab.training.ema import WeightAverage
from random_stats import randomize_batch_norms  # pylint: disable=import-error
# The tiny exported detector of the runner and infer tests, one per session.
from tiny_export import tiny_export, tiny_model_dir  # noqa: F401  pylint: disable=import-error,unused-import

BINDINGS = ["IMAGE_SIZE = 128", "NUM_CLASSES = 3"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
  """ckpt-3 with raw weights and EMA shadows that differ from them, and config.gin."""
  directory = tmp_path_factory.mktemp("model_dir")
  # One model whatever ran before: unseeded random weights made near-tied low scores (which
  # folding's ~1e-6 logit changes may swap) appear in the compared top rows in some sessions.
  keras.utils.set_random_seed(0)
  model = api.load_detector(["efficientdet_d0.gin"], BINDINGS)
  randomize_batch_norms(model, seed=0)
  average = WeightAverage(model)
  rng = np.random.default_rng(1)
  for shadow in average.shadows:
    shadow.assign(shadow * (1.0 + rng.normal(0.0, 0.05, shadow.shape)))
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model, ema=average.shadows),
                             str(directory), max_to_keep=1).save(checkpoint_number=3)
  (directory / "config.gin").write_text(api.detector_config(model))
  return directory


@pytest.fixture(scope="session")
def images():
  """Two uint8 images of one size (a batch) and one of another size."""
  rng = np.random.RandomState(0)
  return (rng.randint(0, 256, (2, 96, 160, 3), dtype=np.uint8),
          rng.randint(0, 256, (200, 120, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pictures():
  """Two images of one size and one of another (narrower than the model input): letterboxed
  with pads on both axes."""
  rng = np.random.RandomState(0)
  return [rng.randint(0, 256, (96, 160, 3), dtype=np.uint8),
          rng.randint(0, 256, (96, 160, 3), dtype=np.uint8),
          rng.randint(0, 256, (50, 40, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def saved_model_detections(tiny_export, pictures):
  """The tiny export's SavedModel on `pictures`, through load_runner."""
  return runners.load_runner(str(tiny_export / "saved_model"))(pictures)
