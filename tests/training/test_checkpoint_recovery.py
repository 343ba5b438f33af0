"""A kill during a save never costs more than the checkpoint being written: an unreadable
newest checkpoint falls back to the previous one; none readable is a clear error."""
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.training.checkpoint import BestCheckpoint, CheckpointKeeper, CheckpointMismatchError


def _saved_dir(tmp_path):
  """Checkpoints 1 and 2 of a small model whose kernel holds the step number."""
  model = keras.Sequential([keras.Input([4]), keras.layers.Dense(2, name="logits")])
  step = tf.Variable(0, dtype=tf.int64)
  keeper = CheckpointKeeper(str(tmp_path), model, step=step)
  for number in (1, 2):
    model.layers[0].kernel.assign(tf.fill([4, 2], float(number)))
    step.assign(number)
    keeper.save(number)
  fresh = keras.Sequential([keras.Input([4]), keras.layers.Dense(2, name="logits")])
  fresh_step = tf.Variable(0, dtype=tf.int64)
  return CheckpointKeeper(str(tmp_path), fresh, step=fresh_step), fresh, fresh_step


def test_the_index_file_is_written_last_so_a_half_written_save_is_ignored(tmp_path):
  # What a kill -9 in the middle of save 3 leaves: data written, `checkpoint` not yet updated.
  keeper, _, step = _saved_dir(tmp_path)
  with open(tmp_path / "ckpt-3.data-00000-of-00001", "wb") as f:
    f.write(b"half")
  assert keeper.restore_latest()
  assert int(step.numpy()) == 2


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
