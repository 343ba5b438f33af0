"""Exact resume: stopped at step k and resumed, a run ends bitwise where an uninterrupted one
ends (model, optimizer slots, EMA shadows), because the checkpoint also holds the iterator --
with the default random transforms on (flip, scale jitter + crop), whose per-example seeds
come from a dataset inside that iterator."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # disable_op_determinism

from detlab.training import experiment
from tiny_backbone import StopAfter  # pylint: disable=import-error  (tests/training/)

# 11 steps x 2 images after the stop: well past the elements the saved map/prefetch buffers
# hold, so the resumed run must make fresh augmented examples.
STOP_AT, TOTAL = 3, 14
# The paper's D0 transforms, on again (tiny_bindings turns them off for the other tests).
BINDINGS = ("train/InputConfig.flip = True", "train/InputConfig.aug_scale_min = 0.1",
            "train/InputConfig.aug_scale_max = 2.0", f"Schedule.train_steps = {TOTAL}")


def _tensors(path: str) -> dict:
  reader = tf.train.load_checkpoint(path)
  names = [n for n in reader.get_variable_to_shape_map()
           if n != "_CHECKPOINTABLE_OBJECT_GRAPH" and "iterator" not in n and
           "save_counter" not in n]  # the split run saved once more
  return {n: reader.get_tensor(n) for n in names}


@pytest.fixture(scope="module", autouse=True)
def _deterministic_ops():
  tf.config.experimental.enable_op_determinism()
  yield
  tf_config.disable_op_determinism()  # not exported as tf.config.experimental.*


def test_stop_and_resume_equals_an_uninterrupted_run(run_train, tmp_path, monkeypatch):
  whole = run_train(tmp_path / "whole", "train", *BINDINGS)
  assert not whole["preempted"]

  # steps_per_loop = 1: the watcher is asked once per step, so it stops at step STOP_AT.
  monkeypatch.setattr(experiment, "PreemptionWatcher", lambda: StopAfter(STOP_AT))
  first = run_train(tmp_path / "split", "train", *BINDINGS)
  assert first["preempted"]
  assert tf.train.latest_checkpoint(str(tmp_path / "split")).endswith(f"ckpt-{STOP_AT}")
  monkeypatch.undo()
  second = run_train(tmp_path / "split", "train", *BINDINGS)
  assert not second["preempted"]

  a = _tensors(str(tmp_path / "whole" / f"ckpt-{TOTAL}"))
  b = _tensors(str(tmp_path / "split" / f"ckpt-{TOTAL}"))
  assert a.keys() == b.keys()
  assert any("ema" in n for n in a) and any("optimizer" in n for n in a)
  differing = [n for n in a if not np.array_equal(a[n], b[n])]
  assert not differing, f"{len(differing)} of {len(a)} tensors differ, e.g. {differing[:3]}"
  # Measured controls (not run, 75 s each): with train.checkpoint_input = False the resumed
  # run sees other batches and its weights differ; so it did with tfm's stateful flip/jitter
  # ops in place of the stateless ones -- the iterator in the checkpoint, seeds included, is
  # what makes this exact. And the last steps did train: weights moved since the last save.
  before = _tensors(tf.train.get_checkpoint_state(
      str(tmp_path / "whole")).all_model_checkpoint_paths[-2])
  moved = [n for n in a if n.startswith("model/") and not np.array_equal(a[n], before[n])]
  assert len(moved) > 10
