"""Checkpoints with resume from the latest, and a guard against restoring a different model.

Beside the checkpoints, `variables.json` records each model variable's name and shape. On
resume it is compared with the current model, so a changed model (e.g. another num_classes)
fails with the list of differing variables instead of restoring partially or starting fresh.
"""
import json
import os

from absl import logging
import tensorflow as tf

SIGNATURE_FILE = "variables.json"


class CheckpointMismatchError(ValueError):
  pass


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

  def restore_latest(self) -> bool:
    """Restores the latest checkpoint if any; returns whether one was restored."""
    path = self.manager.latest_checkpoint
    if not path:
      return False
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
    try:
      self.checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:
      raise CheckpointMismatchError(
          f"Could not restore {path} into this model: {error}\nUse a new --model_dir or the "
          "configuration that wrote it.") from error
    logging.info("Restored %s", path)
    return True

  def restore_path(self, path: str) -> None:
    self.checkpoint.restore(path).expect_partial()

  def save(self, step: int) -> str:
    signature_path = os.path.join(self.model_dir, SIGNATURE_FILE)
    if not tf.io.gfile.exists(signature_path):
      tf.io.gfile.makedirs(self.model_dir)
      with tf.io.gfile.GFile(signature_path, "w") as f:
        json.dump(variable_signature(self.model), f, indent=0)
    return self.manager.save(checkpoint_number=step)
