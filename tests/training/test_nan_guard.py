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
from detlab.training.optimizer import OptimizerConfig, build_optimizer

BATCH = 2


def _loss(model, batch, training):
  error = model(batch["x"], training=training)[:, 0] - batch["y"]
  total = tf.reduce_mean(tf.square(error))
  return {"total": total, "class": total, "box": tf.zeros([])}


def _setup(tmp_path, bad_from: int, bad_to: int, optimizer=None):
  """Trainer + keeper + iterator over 64 examples; examples [bad_from, bad_to) hold a NaN."""
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input([3]), keras.layers.Dense(1)])
  optimizer = optimizer or keras.optimizers.SGD(0.01)
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


def test_a_loop_records_the_first_bad_step_and_names_its_batch(tmp_path):
  trainer, _, iterator, _ = _setup(tmp_path, bad_from=3, bad_to=6)  # 2nd and 3rd batches
  bad_step, ids = trainer.train_steps(iterator, tf.constant(4))
  assert int(bad_step) == 2  # the first bad one, 1-based within the loop
  assert decode_source_ids(ids.numpy()) == ["img-2", "img-3"]
  # The loop ran all its steps (no host decision in between): the next batch is the 5th.
  assert decode_source_ids(next(iterator)["source_ids"].numpy()) == ["img-8", "img-9"]


def _data_ancestors(function, output: str, functions: dict) -> set:
  """Op types that `output` of a FunctionDef depends on through data edges (not control)."""
  nodes = {n.name: n for n in function.node_def}
  seen, types, stack = set(), set(), [function.ret[output]]
  while stack:
    name = stack.pop().split(":")[0]
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    types.add(nodes[name].op)
    stack += [i for i in nodes[name].input if not i.startswith("^")]
  return types


def test_the_traced_loop_condition_depends_only_on_the_step_counter(tmp_path):
  """No per-step host decision: the while condition must not read a step's result (a
  `break` on a non-finite loss would make it depend on the batch from IteratorGetNext)."""
  trainer, _, iterator, _ = _setup(tmp_path, bad_from=0, bad_to=0)
  graph = trainer.train_steps.get_concrete_function(
      iterator, tf.TensorSpec([], tf.int32)).graph.as_graph_def()
  functions = {f.signature.name: f for f in graph.library.function}
  loops = [n for n in graph.node if n.op in ("While", "StatelessWhile")]
  assert len(loops) == 1
  cond = functions[loops[0].attr["cond"].func.name]
  body = functions[loops[0].attr["body"].func.name]
  # Which loop variables the condition reads (data edges back to its arguments).
  args = [a.name for a in cond.signature.input_arg]
  nodes = {n.name: n for n in cond.node_def}
  read, stack = set(), [v for v in cond.ret.values()]
  while stack:
    name = stack.pop().split(":")[0]
    if name in args:
      read.add(args.index(name))
    elif name in nodes and name not in read:
      stack += [i for i in nodes[name].input if not i.startswith("^")]
  assert read
  outputs = [a.name for a in body.signature.output_arg]
  for index in read:
    ancestors = _data_ancestors(body, outputs[index], functions)
    assert not ancestors & {"IteratorGetNext", "IteratorGetNextSync"}, (
        f"loop variable {index} of the condition depends on a step's batch: {ancestors}")


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_a_rollback_restores_the_optimizer_slots_too(tmp_path, rule):
  """tfm builds tf_keras legacy optimizers, whose slots (momentum 0.9, Adam's m and v) appear
  lazily at the first step: unless the Trainer creates them first, the start checkpoint holds
  none and a NaN step's slots survive the rollback, turning every later step NaN."""
  optimizer, _ = build_optimizer(OptimizerConfig(name=rule, warmup_epochs=0.0,
                                                 learning_rate_per_64=0.01 * 32), BATCH, 8, 0)
  assert isinstance(optimizer, keras.optimizers.legacy.Optimizer)
  trainer, keeper, iterator, average = _setup(tmp_path, bad_from=7, bad_to=8,
                                              optimizer=optimizer)  # step 4
  _run(trainer, keeper, iterator, total_steps=8, nan_trials=1)
  assert int(trainer.optimizer.iterations) == 8
  slots = [optimizer.get_slot(v, name) for v in trainer.model.trainable_variables
           for name in optimizer.get_slot_names()]
  assert slots and len(slots) == {"sgd": 1, "adam": 2}[rule] * 2
  for variable in slots + trainer.model.variables + average.shadows:
    assert np.all(np.isfinite(variable.numpy())), variable.name
  # ... and the slots are in the start checkpoint the rollback went back to.
  names = [n for n, _ in tf.train.list_variables(str(tmp_path / "ckpt-0"))]
  assert sum("optimizer/" in n and "/.OPTIMIZER_SLOT/" in n for n in names) == len(slots)


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
