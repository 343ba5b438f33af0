"""The run's seed: `train.seed` if set, else the one saved in model_dir, else a fresh one.

Every run is seeded (python, numpy, TF: weight init and the input pipeline's shuffles and
per-example augmentation seeds), and the seed is logged and saved in `model_dir/seed.json`,
so a resumed run uses the same one and any run can be repeated by setting `train.seed`.
"""
import json
import os
import secrets

from absl import logging
import tensorflow as tf

from detlab.io import write_json

SEED_FILE = "seed.json"


def saved_seed(model_dir: str) -> int | None:
  """The seed saved in `model_dir` (None: no seed.json, or an unreadable one, warned)."""
  path = os.path.join(model_dir, SEED_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      return int(json.load(f)["seed"])
  except (ValueError, KeyError, TypeError) as error:
    logging.warning("%s is unreadable (%s); it is written again by the next training run.",
                    path, error)
    return None


def resolve_seed(model_dir: str, seed: int | None) -> tuple[int, bool]:
  """Returns (seed, whether it is new and should be saved by the writer)."""
  path = os.path.join(model_dir, SEED_FILE)
  saved = saved_seed(model_dir)
  if seed is None:
    if saved is not None:
      logging.info("Seed %d (saved in %s).", saved, path)
      return saved, False
    seed = secrets.randbelow(2**31 - 1)
    logging.info("Seed %d (drawn; set train.seed = %d to repeat this run).", seed, seed)
    return seed, True
  if saved is not None and saved != seed:
    logging.warning("train.seed = %d differs from the seed %d saved in %s; using %d.", seed,
                    saved, path, seed)
  logging.info("Seed %d (train.seed).", seed)
  return seed, saved != seed


def save_seed(directory: str, seed: int) -> None:
  write_json(os.path.join(directory, SEED_FILE), {"seed": seed}, indent=None)
