"""A non-finite step restores the last checkpoint and goes on; too many in a row stop training
with an error that says what to try."""
import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.data.source_id import SOURCE_ID_BYTES, decode_source_ids, encode_source_id
from detlab.training.checkpoint import CheckpointKeeper
from detlab.training.ema import EmaConfig, WeightAverage
from detlab.training.loop import NonFiniteLossError, Trainer, run_training

BATCH = 2


def _loss(model, batch, training):
  error = model(batch["x"], training=training)[:, 0] - batch["y"]
  total = tf.reduce_mean(tf.square(error))
  return {"total": total, "class": total, "box": tf.zeros([])}


def _setup(tmp_path, bad_from: int, bad_to: int):
  """Trainer + keeper + iterator over 64 examples; examples [bad_from, bad_to) hold a NaN."""
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input([3]), keras.layers.Dense(1)])
  optimizer = keras.optimizers.SGD(0.01)
  average = WeightAverage(model, EmaConfig(decay=0.9))
  x = np.random.RandomState(0).normal(size=[64, 3]).astype(np.float32)
  x[bad_from:bad_to] = np.nan
  ids = encode_source_id(tf.constant([f"img-{i}" for i in range(64)]))
  data = {"x": x, "y": x.sum(1), "source_ids": ids}
  iterator = iter(tf.data.Dataset.from_tensor_slices(data).batch(BATCH))
  trainer = Trainer(tf.distribute.get_strategy(), model, optimizer, _loss, 0.0, 0.0,
                    ema=average)
  keeper = CheckpointKeeper(str(tmp_path), model, optimizer=optimizer, ema=average.shadows)
  return trainer, keeper, iterator, average


def _run(trainer, keeper, iterator, total_steps, nan_trials):
  return run_training(
      trainer, iterator, start_step=0, total_steps=total_steps, steps_per_loop=4,
      global_batch=BATCH, learning_rate=lambda step: 0.01, checkpoint=keeper,
      checkpoint_every=4, summary_writer=tf.summary.create_noop_writer(), log_every=4,
      nan_trials=nan_trials)


def test_a_loop_stops_at_the_bad_step_and_names_its_batch(tmp_path):
  trainer, _, iterator, _ = _setup(tmp_path, bad_from=3, bad_to=4)  # in the 2nd batch
  done, ids = trainer.train_steps(iterator, tf.constant(4))
  assert int(done) == 2
  assert decode_source_ids(ids.numpy()) == ["img-2", "img-3"]


def test_string_source_ids_are_refused_with_the_fix(tmp_path):
  trainer, _, _, _ = _setup(tmp_path, bad_from=0, bad_to=0)
  data = {"x": np.zeros([2, 3], np.float32), "y": np.zeros([2], np.float32),
          "source_ids": np.array(["a", "b"])}
  with pytest.raises(TypeError, match="encode_source_id"):
    trainer.train_steps(iter(tf.data.Dataset.from_tensors(data).repeat()), tf.constant(1))


def test_source_id_codes_round_trip_and_mark_truncation():
  ids = ["397133", "2007_000027", "", "ünïcode", "x" * (SOURCE_ID_BYTES + 5)]
  codes = encode_source_id(tf.constant(ids)).numpy()
  assert codes.shape == (5, SOURCE_ID_BYTES) and codes.dtype == np.int32
  assert decode_source_ids(codes) == ids[:4] + ["x" * SOURCE_ID_BYTES + "…"]


def test_a_bad_batch_is_skipped_after_restoring_the_last_checkpoint(tmp_path, caplog):
  trainer, keeper, iterator, average = _setup(tmp_path, bad_from=7, bad_to=8)  # step 4
  with caplog.at_level(logging.WARNING):
    _run(trainer, keeper, iterator, total_steps=8, nan_trials=1)
  assert "Non-finite loss or gradient at step 4 (batch source_ids: img-6, img-7)" in caplog.text
  assert "ckpt-0 (step 0)" in caplog.text  # went back to the start checkpoint
  assert int(trainer.optimizer.iterations) == 8
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-8")
  for variable in trainer.model.variables + average.shadows:
    assert np.all(np.isfinite(variable.numpy())), variable.name


def test_repeated_non_finite_steps_stop_with_advice(tmp_path):
  trainer, keeper, iterator, _ = _setup(tmp_path, bad_from=10, bad_to=64)
  with pytest.raises(NonFiniteLossError) as error:
    _run(trainer, keeper, iterator, total_steps=24, nan_trials=2)
  text = str(error.value)
  assert "It happened 3 time(s) in a row" in text
  assert "lower learning rate" in text and "data_tools.validate_dataset" in text
  assert "img-" in text
