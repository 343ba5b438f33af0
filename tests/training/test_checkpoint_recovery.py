"""A kill during a save never costs more than the checkpoint being written: an unreadable
newest checkpoint falls back to the previous one; none readable is a clear error."""
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.lib.io import file_io  # what CheckpointManager writes its state with

from detlab.training.checkpoint import BestCheckpoint, CheckpointKeeper, CheckpointMismatchError


def _saved_dir_keeper(tmp_path):
  """A fresh keeper (model + step) on tmp_path, as a new process would make."""
  fresh = keras.Sequential([keras.Input([4]), keras.layers.Dense(2, name="logits")])
  fresh_step = tf.Variable(0, dtype=tf.int64)
  return CheckpointKeeper(str(tmp_path), fresh, step=fresh_step), fresh, fresh_step


def _saved_dir(tmp_path):
  """Checkpoints 1 and 2 of a small model whose kernel holds the step number."""
  model = keras.Sequential([keras.Input([4]), keras.layers.Dense(2, name="logits")])
  step = tf.Variable(0, dtype=tf.int64)
  keeper = CheckpointKeeper(str(tmp_path), model, step=step)
  for number in (1, 2):
    model.layers[0].kernel.assign(tf.fill([4, 2], float(number)))
    step.assign(number)
    keeper.save(number)
  return _saved_dir_keeper(tmp_path)


def test_the_state_file_is_written_last_and_atomically(tmp_path, monkeypatch):
  """At the moment `checkpoint` (the state file) is replaced, ckpt-3's files are complete: a kill
  before that leaves the state naming ckpt-2, a kill during it leaves the old state file."""
  keeper, _, step = _saved_dir(tmp_path)
  seen = []
  write = file_io.atomic_write_string_to_file

  def watched(filename, contents, overwrite=True):
    if os.path.basename(filename) == "checkpoint":
      reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-3"))  # raises if incomplete
      seen.append(int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")))
    return write(filename, contents, overwrite)

  monkeypatch.setattr(file_io, "atomic_write_string_to_file", watched)
  step.assign(3)
  keeper.save(3)
  assert seen and set(seen) == {3}  # (TF writes the state file twice per save)
  # What a kill -9 before that moment leaves (data, no index, old state) resumes at 2.
  monkeypatch.undo()
  for name in ("ckpt-3.index", "checkpoint"):
    os.remove(tmp_path / name)
  tf.compat.v1.train.update_checkpoint_state(str(tmp_path), "ckpt-2", ["ckpt-1", "ckpt-2"])
  fresh_step = tf.Variable(0, dtype=tf.int64)
  fresh = CheckpointKeeper(str(tmp_path), keras.Sequential(
      [keras.Input([4]), keras.layers.Dense(2, name="logits")]), step=fresh_step)
  assert fresh.restore_latest() and int(fresh_step.numpy()) == 2


@pytest.mark.parametrize("state", [b"", b"model_checkpoint_path: {{garbage", b"\x00\xff"])
def test_a_garbage_state_file_never_restarts_from_zero(tmp_path, caplog, state):
  _saved_dir(tmp_path)
  (tmp_path / "checkpoint").write_bytes(state)
  keeper, model, step = _saved_dir_keeper(tmp_path)  # a new process reads the garbage
  with caplog.at_level(logging.WARNING):
    assert keeper.restore_latest()
  assert int(step.numpy()) == 2 and np.all(model.layers[0].kernel.numpy() == 2.0)
  assert "ckpt-2" in caplog.text
  # The state is repaired: the next save keeps going from there, and a new start finds it.
  assert keeper.manager.latest_checkpoint.endswith("ckpt-2")
  step.assign(4)
  keeper.save(4)
  again, _, again_step = _saved_dir_keeper(tmp_path)
  assert again.restore_latest() and int(again_step.numpy()) == 4


def test_a_garbage_state_file_and_no_readable_checkpoint_is_an_error_naming_them(tmp_path):
  _saved_dir(tmp_path)
  (tmp_path / "checkpoint").write_text("garbage")
  keeper, _, _ = _saved_dir_keeper(tmp_path)
  for number in (1, 2):
    path = tmp_path / f"ckpt-{number}.data-00000-of-00001"
    path.write_bytes(path.read_bytes()[:3])
  with pytest.raises(CheckpointMismatchError) as error:
    keeper.restore_latest()
  text = str(error.value)
  assert "ckpt-1" in text and "ckpt-2" in text and "No checkpoint in" in text


def test_a_stale_signature_without_checkpoints_is_replaced_at_the_first_save(tmp_path):
  """variables.json of another model, its checkpoints deleted: the new run's own checkpoints
  must resume later, so the first save writes the signature of the model it saves."""
  CheckpointKeeper(str(tmp_path), keras.Sequential([keras.Input([4]), keras.layers.Dense(7)])
                   ).save(1)
  for name in os.listdir(tmp_path):
    if name != "variables.json":
      os.remove(tmp_path / name)
  keeper, _, step = _saved_dir_keeper(tmp_path)
  assert not keeper.restore_latest()
  step.assign(5)
  keeper.save(5)
  again, _, again_step = _saved_dir_keeper(tmp_path)
  assert again.restore_latest() and int(again_step.numpy()) == 5


def test_a_half_written_signature_is_not_fatal_and_is_rewritten(tmp_path, caplog):
  keeper, _, step = _saved_dir(tmp_path)
  (tmp_path / "variables.json").write_text('{"logits/kernel:0": [4,')  # disk full
  with caplog.at_level(logging.WARNING):
    assert keeper.restore_latest()
  assert int(step.numpy()) == 2 and "variables.json" in caplog.text
  keeper.save(3)
  assert json.loads((tmp_path / "variables.json").read_text())["logits/kernel:0"] == [4, 2]


@pytest.mark.parametrize("damage", ["truncate_data", "delete_index"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage):
  keeper, model, step = _saved_dir(tmp_path)
  if damage == "truncate_data":
    path = tmp_path / "ckpt-2.data-00000-of-00001"
    path.write_bytes(path.read_bytes()[:10])
  else:
    os.remove(tmp_path / "ckpt-2.index")
  with caplog.at_level(logging.WARNING):
    assert keeper.restore_latest()
  assert int(step.numpy()) == 1
  assert np.all(model.layers[0].kernel.numpy() == 1.0)
  assert "ckpt-2 is unreadable" in caplog.text and "falling back to" in caplog.text


def test_no_readable_checkpoint_is_an_error_that_names_the_way_out(tmp_path):
  keeper, _, _ = _saved_dir(tmp_path)
  for number in (1, 2):
    os.remove(tmp_path / f"ckpt-{number}.index")
  with pytest.raises(CheckpointMismatchError) as error:
    keeper.restore_latest()
  assert "No checkpoint in" in str(error.value)
  assert "train.checkpoint_input = False" in str(error.value)


def test_best_checkpoint_keeps_only_improvements(tmp_path):
  model = keras.Sequential([keras.Input([4]), keras.layers.Dense(2)])
  best = BestCheckpoint(str(tmp_path), model=model)
  assert best.update(10, {"AP": 0.2}) and not best.update(20, {"AP": 0.1})
  assert best.update(30, {"AP": 0.3})
  assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith("ckpt-30")
  assert BestCheckpoint(str(tmp_path), model=model).best == pytest.approx(0.3)  # re-read


def test_a_nan_metric_never_becomes_the_best(tmp_path):
  """A diverged evaluation (NaN AP) must neither replace the best nor stay best forever."""
  model = keras.Sequential([keras.Input([4]), keras.layers.Dense(2)])
  best = BestCheckpoint(str(tmp_path), model=model)
  assert not best.update(10, {"AP": float("nan")})
  assert best.update(20, {"AP": 0.2})
  assert not best.update(30, {"AP": float("nan")}) and not best.update(40, {"AP": float("inf")})
  assert best.best == pytest.approx(0.2)
  assert tf.train.latest_checkpoint(str(tmp_path / "best")).endswith("ckpt-20")
  assert best.update(50, {"AP": 0.25})
