"""Checkpoints with resume from the latest, and a guard against restoring a different model.

Beside the checkpoints, `variables.json` records each model variable's name and shape. On
resume it is compared with the current model, so a changed model (e.g. another num_classes)
fails with the list of differing variables instead of restoring partially or starting fresh.

A checkpoint holds whatever trackables the caller names: the training loop passes the model,
optimizer (its `iterations` is the step), EMA shadows and the tf.data iterator, so a resumed
run continues exactly where the saved one was.

Across strategies: a distributed iterator (Mirrored, multi-worker, TPU) cannot be saved, so
their checkpoints hold no input position. Restoring one into a run that tracks its iterator
restores everything else exactly and leaves `input_restored` False: the caller then starts
its input stream again at the restored step (`track_input` puts the new iterator in the
checkpoints that follow). A checkpoint with a position restored where no iterator is tracked
simply leaves it unread.

Crash safety: `tf.train.CheckpointManager` writes ckpt-N.data/.index first (TF's saver writes
them under a temporary name and renames) and rewrites the `checkpoint` index file last, by an
atomic rename. A kill during a save therefore leaves the index pointing at the previous
checkpoint. If the newest checkpoint it names is unreadable anyway (truncated or deleted
files), `restore_latest` warns, names the broken files and falls back to the next older kept
checkpoint; only when none can be read is it an error.

The `checkpoint` state file is not trusted alone: the candidates are the checkpoints it
names and the `ckpt-*.index` files in the directory, newest first. A garbage or empty state
file (or one left behind by an older run) therefore never makes a run start again from step 0
over existing checkpoints; the state is rewritten to name what was restored.
`variables.json` is written atomically and replaced at the first save of a run when absent,
unreadable or stale (another model whose checkpoints are gone).
"""
import json
import math
import os
import re

from absl import logging
import tensorflow as tf

from detlab.io import write_json

SIGNATURE_FILE = "variables.json"


# What TF raises for a truncated/missing ckpt file: OpErrors (NotFound, DataLoss), but also
# IndexError ("Read less bytes than requested") from the checkpoint reader.
_UNREADABLE = (tf.errors.OpError, IndexError)


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _number(name: str) -> int:
  return int(os.path.basename(name).rsplit("-", 1)[1])


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


def _known_checkpoints(directory: str) -> list[str]:
  """The checkpoints the state file in `directory` names, oldest first ([] if unreadable)."""
  try:
    state = tf.train.get_checkpoint_state(directory)
  except (ValueError, UnicodeDecodeError, tf.errors.OpError):
    return []
  if state is None:
    return []
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  return [os.path.join(directory, os.path.basename(p)) for p in paths if p]


def _manager(checkpoint, directory: str, max_to_keep: int) -> tf.train.CheckpointManager:
  """A CheckpointManager; a state file it cannot parse (empty, binary) is moved aside to
  `checkpoint.unreadable`, and the checkpoints are then found by listing (restore_latest)."""
  try:
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
  except (ValueError, UnicodeDecodeError) as error:
    state = os.path.join(directory, "checkpoint")
    logging.warning("The state file %s is unreadable (%s); moved to %s.unreadable.", state,
                    _first_line(error), state)
    tf.io.gfile.rename(state, state + ".unreadable", overwrite=True)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


class CheckpointKeeper:
  """Saves every `every_steps` (and on demand) and restores the latest on start."""

  def __init__(self, model_dir: str, model, max_to_keep: int = 3, *,
               read_dir: str | None = None, read_only: bool = False, **trackables):
    """Saves into `model_dir`; restores from `read_dir` (default model_dir: a non-chief
    worker reads the chief's checkpoints and saves into its own temporary directory).
    `read_only` (evaluation): never writes, not even a repaired state file."""
    self.model_dir, self.model = model_dir, model
    self.read_dir, self.read_only = read_dir or model_dir, read_only
    self.checkpoint = tf.train.Checkpoint(model=model, **trackables)
    self.manager = None if read_only else _manager(self.checkpoint, model_dir, max_to_keep)
    self._trackables, self.max_to_keep = dict(trackables), max_to_keep
    self.input_restored = False  # restore_latest restored the input position
    self._signature_checked = False
    # What a NaN recovery restores: everything but the input position, so that the data
    # moves on past the batch that went wrong.
    self._without_input = tf.train.Checkpoint(
        model=model, **{k: v for k, v in trackables.items() if k != "iterator"})

  def restore_latest(self) -> bool:
    """Restores the latest readable checkpoint if any; returns whether one was restored."""
    paths = self._candidates()
    if not paths:
      return False
    self._check_signature()
    failures = []
    for i, path in enumerate(paths):
      try:
        self._restore(path)
      except _UNREADABLE as error:  # truncated or missing files
        failures.append(f"  {os.path.basename(path)}: {_first_line(error)}")
        if i + 1 == len(paths):
          raise CheckpointMismatchError(
              f"No checkpoint in {self.read_dir} could be read; tried, newest first:\n" +
              "\n".join(failures) + "\nTraining does not start over them. If the input "
              "pipeline changed (batch size, files, augmentation), restore without the input "
              "position: --gin_bindings='train.checkpoint_input = False'; otherwise move "
              "these files away or use a new --model_dir.") from error
        logging.warning("Checkpoint %s is unreadable (%s: %s); falling back to %s.", path,
                        type(error).__name__, _first_line(error), paths[i + 1])
        continue
      logging.info("Restored %s", path)
      if self.manager is not None and self.read_dir == self.model_dir and \
          path != self.manager.latest_checkpoint:
        self._rewrite_state(path, paths[i:])
      return True
    return False

  def latest(self) -> str | None:
    """The checkpoint a NaN recovery goes back to: the newest saved here, else the one read."""
    if self.manager is not None and self.manager.latest_checkpoint:
      return self.manager.latest_checkpoint
    if self.read_dir != self.model_dir:
      return (_known_checkpoints(self.read_dir) or [None])[-1]
    return None

  def _candidates(self) -> list[str]:
    """Checkpoints the state file names plus the ckpt-N.index files found, newest first."""
    known = {os.path.basename(p): p for p in _known_checkpoints(self.read_dir)}
    listed = [os.path.basename(p)[:-len(".index")]
              for p in tf.io.gfile.glob(os.path.join(self.read_dir, "ckpt-*.index"))]
    found = {name: os.path.join(self.read_dir, name) for name in listed
             if re.fullmatch(r"ckpt-\d+", name)}
    if set(found) - set(known):
      state = os.path.join(self.read_dir, "checkpoint")
      logging.warning("The state file %s %s; using the checkpoints found by listing: %s.",
                      state, "does not name " + ", ".join(sorted(set(found) - set(known)))
                      if known else "is missing, empty or unreadable",
                      ", ".join(sorted(found, key=_number)))
    merged = {**found, **known}
    return [merged[name] for name in sorted(merged, key=_number, reverse=True)]

  def _rewrite_state(self, restored: str, older: list[str]) -> None:
    """Points the state file at the restored checkpoint (and the older readable-looking ones),
    so that later saves, NaN recovery and max_to_keep go on from there."""
    kept = [os.path.basename(p) for p in reversed(older)][-self.manager._max_to_keep:]  # pylint: disable=protected-access
    tf.compat.v1.train.update_checkpoint_state(self.model_dir, os.path.basename(restored),
                                               kept)
    self.manager = _manager(self.checkpoint, self.model_dir, self.manager._max_to_keep)  # pylint: disable=protected-access
    logging.warning("Rewrote %s to name %s.", os.path.join(self.model_dir, "checkpoint"),
                    ", ".join(kept))

  def restore_for_recovery(self) -> str:
    """Restores the latest checkpoint except the input iterator; returns its path."""
    path = self.latest()
    if not path:
      raise FileNotFoundError(f"No checkpoint in {self.model_dir} to recover from.")
    self._without_input.restore(path).expect_partial()
    return path

  def _read_signature(self, directory: str) -> dict | None:
    """The signature saved in `directory`; None if absent or unreadable (a half-written
    first save)."""
    signature_path = os.path.join(directory, SIGNATURE_FILE)
    if not tf.io.gfile.exists(signature_path):
      return None
    try:
      with tf.io.gfile.GFile(signature_path) as f:
        saved = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
      logging.warning("%s is unreadable (%s); relying on the checkpoint's own structure check. "
                      "It is rewritten at the next save.", signature_path, error)
      return None
    return saved if isinstance(saved, dict) else None

  def _check_signature(self) -> None:
    saved = self._read_signature(self.read_dir)
    if saved is not None:
      differences = _describe_differences(saved, variable_signature(self.model))
      if differences:
        raise CheckpointMismatchError(
            f"The checkpoint in {self.read_dir} does not fit this model; these variables "
            f"differ:\n" + "\n".join(differences) +
            "\nUse a new --model_dir, or go back to the configuration that wrote it "
            f"(its operative gin config is saved in {self.read_dir}).")

  def track_input(self, iterator) -> None:
    """Saves `iterator` as the input position from now on (a restarted input stream)."""
    self._trackables["iterator"] = iterator
    self.checkpoint = tf.train.Checkpoint(model=self.model, **self._trackables)
    if self.manager is not None:
      self.manager = _manager(self.checkpoint, self.model_dir, self.max_to_keep)

  def _restore(self, path: str) -> None:
    checkpoint = self.checkpoint
    self.input_restored = "iterator" in self._trackables
    # The reader itself: tf.train.list_variables takes a ram:// prefix for a directory.
    if self.input_restored and not any(name.startswith("iterator/") for name in (
        tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map())):
      # Written under a strategy whose iterator cannot be saved: all but the input position.
      checkpoint, self.input_restored = self._without_input, False
    try:
      checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError) as error:
      raise CheckpointMismatchError(
          f"Could not restore {path} into this model: {error}\nUse a new --model_dir or the "
          "configuration that wrote it (a checkpoint written before EMA was added needs "
          "--gin_bindings='EmaConfig.enabled = False').") from error

  def restore_path(self, path: str) -> None:
    self.checkpoint.restore(path).expect_partial()

  def save(self, step: int) -> str:
    if self.manager is None:
      raise RuntimeError(f"CheckpointKeeper({self.model_dir}) is read-only (evaluation).")
    if not self._signature_checked:  # once per run: absent, unreadable or stale -> rewrite
      current = variable_signature(self.model)
      if self._read_signature(self.model_dir) != current:
        tf.io.gfile.makedirs(self.model_dir)
        write_json(os.path.join(self.model_dir, SIGNATURE_FILE), current, indent=0)
      self._signature_checked = True
    return self.manager.save(checkpoint_number=step)


class BestCheckpoint:
  """Keeps the one checkpoint with the highest `metric` in `model_dir/best/`, with its metrics
  in `best/metrics.json` (read back on start, so a resumed run keeps the best so far)."""

  def __init__(self, model_dir: str, metric: str = "AP", **trackables):
    if not metric or "loss" in metric.lower():
      raise ValueError(f"BestCheckpoint keeps the highest value of its metric; {metric!r} is "
                       "not one where higher is better. Name an accuracy-like metric (AP, "
                       "top1, mIoU) as the task's primary_metric, or None for no best/.")
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
    if not math.isfinite(value):  # a diverged evaluation never becomes the best
      logging.warning("Best checkpoint: %s is %s at step %d; not a candidate.", self.metric,
                      value, step)
      return False
    if self.best is not None and math.isfinite(self.best) and value <= self.best:
      return False
    self.best = value
    path = self.manager.save(checkpoint_number=step)
    write_json(os.path.join(self.directory, "metrics.json"),
               {self.metric: value, "step": step, "checkpoint": os.path.basename(path),
                "metrics": {k: float(v) for k, v in metrics.items()}})
    logging.info("New best %s %.4f at step %d: %s", self.metric, value, step, path)
    return True
