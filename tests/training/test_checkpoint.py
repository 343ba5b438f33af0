"""Checkpoint guard: a model_dir written by another model fails loudly, naming variables."""
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.training.checkpoint import CheckpointKeeper, CheckpointMismatchError


def _model(classes):
  inputs = keras.Input([4])
  x = keras.layers.Dense(3, name="hidden")(inputs)
  return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


def test_resume_restores_the_latest_checkpoint(tmp_path):
  model = _model(2)
  step = tf.Variable(0, dtype=tf.int64)
  keeper = CheckpointKeeper(str(tmp_path), model, step=step)
  step.assign(7)
  keeper.save(7)
  saved = [w.numpy() for w in model.weights]

  other, other_step = _model(2), tf.Variable(0, dtype=tf.int64)
  assert CheckpointKeeper(str(tmp_path), other, step=other_step).restore_latest()
  assert int(other_step.numpy()) == 7
  for a, b in zip(saved, other.weights):
    assert (a == b.numpy()).all()


def test_a_different_model_is_an_error_listing_the_variables(tmp_path):
  CheckpointKeeper(str(tmp_path), _model(2)).save(1)
  with pytest.raises(CheckpointMismatchError) as error:
    CheckpointKeeper(str(tmp_path), _model(5)).restore_latest()
  text = str(error.value)
  assert "logits/kernel:0 checkpoint [3, 2] vs model [3, 5]" in text
  assert "logits/bias:0 checkpoint [2] vs model [5]" in text
  assert "hidden" not in text and "new --model_dir" in text


def test_empty_model_dir_starts_fresh(tmp_path):
  assert not CheckpointKeeper(str(tmp_path), _model(2)).restore_latest()


def test_an_evaluation_keeper_reading_model_dir_checks_its_signature(tmp_path):
  """--mode=eval writes under eval/ but reads (and checks) model_dir's checkpoints."""
  CheckpointKeeper(str(tmp_path), _model(2)).save(1)
  with pytest.raises(CheckpointMismatchError, match="does not fit this model"):
    CheckpointKeeper(str(tmp_path / "eval"), _model(5), read_dir=str(tmp_path),
                     read_only=True).restore_latest()
  assert CheckpointKeeper(str(tmp_path / "eval"), _model(2), read_dir=str(tmp_path),
                          read_only=True).restore_latest()
  assert not (tmp_path / "eval").exists()  # read-only: wrote nothing
