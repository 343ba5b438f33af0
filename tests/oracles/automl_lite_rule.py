"""The deterministic weights of the EfficientDet-Lite0 oracle: every value a function of its
google/automl checkpoint name and shape, so the bundle is rebuilt from names and shapes alone.

Used by make_automl_lite_oracle.py (which runs google/automl's own Lite0 with these weights)
and by the test that converts the same bundle with detlab's converter. numpy + TensorFlow only.
"""
import os
import sys
import zlib

import numpy as np

# The TF1 name-based bundle writer the D0 bundle tests use (one writer for both oracles).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "weights"))
from automl_bundle import write_bundle  # noqa: E402,F401  pylint: disable=import-error,wrong-import-position,unused-import

EMA_SUFFIX = "/ExponentialMovingAverage"
# The fixed input: a seeded uint8 RGB image at the model's native size, normalised by each
# side's own code (automl: DetectionInputProcessor.normalize_image with its config's
# mean_rgb / stddev_rgb; detlab: the backbone's input convention).
IMAGE_SEED = 20260
IMAGE_SIZE = 320
# Outputs kept per level, head and weight kind (a fixed subsample; the per-level sums too).
SAMPLES_PER_OUTPUT = 256


def value(name: str, shape) -> np.ndarray:
  """float32 array for the checkpoint tensor `name` (EMA shadows are their own names, hence
  independent draws). Scaled so that activations stay O(1) through the network: kernels
  N(0, 1/fan_in), BN gamma U(0.5, 1.5), beta and moving mean U(-0.2, 0.2), moving variance
  U(0.5, 1.5) (positive), biases U(-0.1, 0.1)."""
  rng = np.random.RandomState(zlib.crc32(name.encode("utf-8")))
  shape = tuple(int(d) for d in shape)
  leaf = name[:-len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name
  leaf = leaf.rsplit("/", 1)[-1]
  if leaf in ("kernel", "depthwise_kernel", "pointwise_kernel"):
    if leaf == "depthwise_kernel":
      fan_in = shape[0] * shape[1]
    else:
      fan_in = int(np.prod(shape[:-1]))
    out = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
  elif leaf in ("gamma", "moving_variance"):
    out = rng.uniform(0.5, 1.5, shape)
  elif leaf in ("beta", "moving_mean"):
    out = rng.uniform(-0.2, 0.2, shape)
  elif leaf == "bias":
    out = rng.uniform(-0.1, 0.1, shape)
  else:
    raise ValueError(f"No rule for checkpoint tensor {name!r}")
  return out.astype(np.float32)


def bundle_tensors(names_and_shapes) -> dict:
  """{name: value, name + EMA_SUFFIX: value} for every (name, shape)."""
  tensors = {}
  for name, shape in names_and_shapes:
    tensors[name] = value(name, shape)
    tensors[name + EMA_SUFFIX] = value(name + EMA_SUFFIX, shape)
  return tensors


def image() -> np.ndarray:
  """The fixed input, uint8 [1, IMAGE_SIZE, IMAGE_SIZE, 3]: smooth colour ramps plus noise
  (both seeded), so that it is neither flat nor pure noise."""
  rng = np.random.RandomState(IMAGE_SEED)
  grid = np.linspace(0.0, 1.0, IMAGE_SIZE)
  ramps = np.stack([np.add.outer(grid * a, grid * b) for a, b in rng.uniform(-1, 1, (3, 2))],
                   -1)
  ramps = (ramps - ramps.min()) / (ramps.max() - ramps.min())
  pixels = 255.0 * (0.7 * ramps + 0.3 * rng.uniform(0, 1, ramps.shape))
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)[None]


def sample_indices(size: int, level: int, head: str) -> np.ndarray:
  """The fixed subsample of a flattened output of `size` values (sorted flat indices)."""
  rng = np.random.RandomState(zlib.crc32(f"{head}_{level}".encode("utf-8")))
  return np.sort(rng.choice(size, min(size, SAMPLES_PER_OUTPUT), replace=False))
