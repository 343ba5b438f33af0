"""Checkpoints with resume from the latest, and a guard against restoring a different model.

Beside the checkpoints, `variables.json` records each model variable's name and shape. On
resume it is compared with the current model, so a changed model (e.g. another num_classes)
fails with the list of differing variables instead of restoring partially or starting fresh.

A checkpoint holds whatever trackables the caller names: the training loop passes the model,
optimizer (its `iterations` is the step), EMA shadows and the tf.data iterator, so a resumed
run continues exactly where the saved one was.

Crash safety: `tf.train.CheckpointManager` writes ckpt-N.data/.index first (TF's saver writes
them under a temporary name and renames) and rewrites the `checkpoint` index file last, by an
atomic rename. A kill during a save therefore leaves the index pointing at the previous
checkpoint. If the newest checkpoint it names is unreadable anyway (truncated or deleted
files), `restore_latest` warns, names the broken files and falls back to the next older kept
checkpoint; only when none can be read is it an error.
"""
import json
import os

from absl import logging
import tensorflow as tf

SIGNATURE_FILE = "variables.json"


# What TF raises for a truncated/missing ckpt file: OpErrors (NotFound, DataLoss), but also
# IndexError ("Read less bytes than requested") from the checkpoint reader.
_UNREADABLE = (tf.errors.OpError, IndexError)


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


class CheckpointMismatchError(ValueError):
  """The checkpoint cannot be restored into this model / input pipeline (says why)."""


def variable_signature(model) -> dict:
  return {v.name: list(v.shape) for v in model.variables}


def _describe_differences(saved: dict, current: dict, limit: int = 20) -> list[str]:
  lines = []
  for name in sorted(set(saved) | set(current)):
    if name not in current:
      lines.append(f"  only in checkpoint: {name} {saved[name]}")
    elif name not in saved:
      lines.append(f"  only in model:      {name} {current[name]}")
    elif saved[name] != current[name]:
      lines.append(f"  shape differs:      {name} checkpoint {saved[name]} vs model "
                   f"{current[name]}")
  if len(lines) > limit:
    lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
  return lines


class CheckpointKeeper:
  """Saves every `every_steps` (and on demand) and restores the latest on start."""

  def __init__(self, model_dir: str, model, max_to_keep: int = 3, **trackables):
    self.model_dir, self.model = model_dir, model
    self.checkpoint = tf.train.Checkpoint(model=model, **trackables)
    self.manager = tf.train.CheckpointManager(self.checkpoint, model_dir,
                                              max_to_keep=max_to_keep)
    # What a NaN recovery restores: everything but the input position, so that the data
    # moves on past the batch that went wrong.
    self._without_input = tf.train.Checkpoint(
        model=model, **{k: v for k, v in trackables.items() if k != "iterator"})

  def restore_latest(self) -> bool:
    """Restores the latest readable checkpoint if any; returns whether one was restored."""
    paths = list(reversed(self.manager.checkpoints))
    if not paths:
      return False
    self._check_signature()
    for i, path in enumerate(paths):
      try:
        self._restore(path)
      except _UNREADABLE as error:  # truncated or missing files
        if i + 1 == len(paths):
          raise CheckpointMismatchError(
              f"No checkpoint in {self.model_dir} could be read; the last one tried, {path}, "
              f"fails with: {_first_line(error)}\nIf the input pipeline changed (batch size, "
              "files, augmentation), restore without the input position: "
              "--gin_bindings='train.checkpoint_input = False'; otherwise use a new "
              "--model_dir.") from error
        logging.warning("Checkpoint %s is unreadable (%s: %s); falling back to %s.", path,
                        type(error).__name__, _first_line(error), paths[i + 1])
        continue
      logging.info("Restored %s", path)
      return True
    return False

  def restore_for_recovery(self) -> str:
    """Restores the latest checkpoint except the input iterator; returns its path."""
    path = self.manager.latest_checkpoint
    if not path:
      raise FileNotFoundError(f"No checkpoint in {self.model_dir} to recover from.")
    self._without_input.restore(path).expect_partial()
    return path

  def _check_signature(self) -> None:
    signature_path = os.path.join(self.model_dir, SIGNATURE_FILE)
    if tf.io.gfile.exists(signature_path):
      with tf.io.gfile.GFile(signature_path) as f:
        saved = json.load(f)
      differences = _describe_differences(saved, variable_signature(self.model))
      if differences:
        raise CheckpointMismatchError(
            f"The checkpoint in {self.model_dir} does not fit this model; these variables "
            f"differ:\n" + "\n".join(differences) +
            "\nUse a new --model_dir, or go back to the configuration that wrote it "
            f"(its operative gin config is saved in {self.model_dir}).")

  def _restore(self, path: str) -> None:
    try:
      self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError) as error:
      raise CheckpointMismatchError(
          f"Could not restore {path} into this model: {error}\nUse a new --model_dir or the "
          "configuration that wrote it (a checkpoint written before EMA was added needs "
          "--gin_bindings='EmaConfig.enabled = False').") from error

  def restore_path(self, path: str) -> None:
    self.checkpoint.restore(path).expect_partial()

  def save(self, step: int) -> str:
    signature_path = os.path.join(self.model_dir, SIGNATURE_FILE)
    if not tf.io.gfile.exists(signature_path):
      tf.io.gfile.makedirs(self.model_dir)
      with tf.io.gfile.GFile(signature_path, "w") as f:
        json.dump(variable_signature(self.model), f, indent=0)
    return self.manager.save(checkpoint_number=step)


class BestCheckpoint:
  """Keeps the one checkpoint with the highest `metric` in `model_dir/best/`, with its metrics
  in `best/metrics.json` (read back on start, so a resumed run keeps the best so far)."""

  def __init__(self, model_dir: str, metric: str = "AP", **trackables):
    self.directory, self.metric = os.path.join(model_dir, "best"), metric
    self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**trackables),
                                              self.directory, max_to_keep=1)
    self.best = None
    path = os.path.join(self.directory, "metrics.json")
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        self.best = json.load(f)[metric]

  def update(self, step: int, metrics: dict) -> bool:
    """Saves if `metrics[metric]` beats the best so far; returns whether it did."""
    value = float(metrics[self.metric])
    if self.best is not None and value <= self.best:
      return False
    self.best = value
    path = self.manager.save(checkpoint_number=step)
    with tf.io.gfile.GFile(os.path.join(self.directory, "metrics.json"), "w") as f:
      json.dump({self.metric: value, "step": step, "checkpoint": os.path.basename(path),
                 "metrics": {k: float(v) for k, v in metrics.items()}}, f, indent=1)
    logging.info("New best %s %.4f at step %d: %s", self.metric, value, step, path)
    return True
