"""OptimizerConfig.backbone_learning_rate_multiplier: a second optimizer on the schedule x m
updates the backbone's variables. Adam divides the gradient's scale out, so these tests use
Adam: a multiplier that scaled gradients instead of the rate would move nothing less.

The MirroredStrategy + mixed_float16 check runs this file as a script in a fresh process
(two logical CPUs must be set before TF starts). Steps run eagerly (`_eager_step`): the
Trainer's own per-replica step without tracing the loop, which costs more than the steps."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

sys.path.insert(0, os.path.dirname(__file__))
from replica_training import detection_loss  # noqa: E402  pylint: disable=import-error,wrong-import-position
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=import-error,wrong-import-position
from detlab.benchmark import synthetic_train_batch  # noqa: E402
from detlab.models.efficientdet import efficientdet  # noqa: E402
from detlab.training.loop import Trainer  # noqa: E402
from detlab.training.optimizer import (OptimizerConfig, backbone_optimizer_of,  # noqa: E402
                                       build_optimizer)
from detlab.training.setup import backbone_variables, with_loss_scaling  # noqa: E402

PEAK = 0.05  # learning_rate_per_64 = 1.6 at batch 2: Adam's first step moves ~PEAK per weight


def _setup(multiplier: float, strategy=None, policy: str = "float32"):
  """(model, optimizer, Trainer): a tiny detector from seed 0, Adam, no warm-up."""
  strategy = strategy or tf.distribute.get_strategy()
  keras.utils.set_random_seed(0)
  with strategy.scope():
    keras.mixed_precision.set_global_policy(policy)
    try:
      model = efficientdet(tiny_test_backbone, num_classes=3, image_size=64, max_level=5,
                           fpn_width=16, fpn_cells=1, head_repeats=1, sync_bn=False)
    finally:
      keras.mixed_precision.set_global_policy("float32")
    config = OptimizerConfig(name="adam", learning_rate_per_64=PEAK * 32, warmup_epochs=0.0,
                             backbone_learning_rate_multiplier=multiplier)
    optimizer, _ = build_optimizer(config, 2, 10, 0)
    optimizer = with_loss_scaling(optimizer, policy)
  backbone = None
  if backbone_optimizer_of(optimizer) is not None:
    backbone = backbone_variables(model, multiplier)
  trainer = Trainer(strategy, model, optimizer, detection_loss, 0.0, 0.0,
                    backbone_variables=backbone)
  return model, optimizer, trainer


def _batches(model, strategy, global_batch: int, poison_first: bool = False):
  keras.utils.set_random_seed(1)
  batch = synthetic_train_batch(model, global_batch)
  batches = [batch]
  if poison_first:  # an overflow: the first batch's images are inf
    batches = [dict(batch, images=tf.fill(tf.shape(batch["images"]), np.inf)), batch]
  data = tf.data.Dataset.from_tensor_slices(
      {k: tf.stack([b[k] for b in batches]) for k in batch}).repeat()
  return iter(strategy.experimental_distribute_dataset(data.unbatch().batch(global_batch)))


def _eager_step(trainer, iterator) -> int:
  """One step of `trainer` (strategy.run of its per-replica step); >0 if it was non-finite."""
  bad, _ = trainer.strategy.run(trainer._replica_step, args=(next(iterator),))  # pylint: disable=protected-access
  return int(trainer.strategy.reduce(tf.distribute.ReduceOp.SUM, bad, axis=None))


def _step(multiplier: float) -> dict:
  model, optimizer, trainer = _setup(multiplier)
  before = [v.numpy() for v in model.trainable_variables]
  _eager_step(trainer, _batches(model, tf.distribute.get_strategy(), 2))
  inside = {v.ref() for v in model.backbone.trainable_variables}
  return {"model": model, "optimizer": optimizer,
          "backbone": [v.ref() in inside for v in model.trainable_variables],
          "moves": [v.numpy() - b for v, b in zip(model.trainable_variables, before)]}


@pytest.fixture(scope="module")
def steps():
  return {1.0: _step(1.0), 0.1: _step(0.1)}


def test_adam_moves_the_backbone_a_tenth_and_the_rest_identically(steps):
  full, slow = steps[1.0], steps[0.1]
  assert any(slow["backbone"]) and not all(slow["backbone"])
  for inside, a, b in zip(slow["backbone"], full["moves"], slow["moves"]):
    if inside:
      np.testing.assert_allclose(b, 0.1 * a, rtol=1e-3, atol=1e-7)
    else:
      np.testing.assert_array_equal(b, a)
  assert max(np.abs(m).max() for m in full["moves"]) > 0.9 * PEAK  # the step did move


def _keys(model, optimizer, path) -> list[str]:
  saved = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(path))
  return [name for name, _ in tf.train.list_variables(saved)]


def test_the_default_keeps_one_optimizer_and_its_checkpoint(steps, tmp_path):
  full = steps[1.0]
  assert backbone_optimizer_of(full["optimizer"]) is None
  keys = _keys(full["model"], full["optimizer"], tmp_path / "one")
  slots = [k for k in keys if "/.OPTIMIZER_SLOT/optimizer/" in k]
  assert not [k for k in keys if "backbone_optimizer" in k]
  assert len(slots) == 2 * len(full["model"].trainable_variables)  # Adam's m and v, all
  split = _keys(steps[0.1]["model"], steps[0.1]["optimizer"], tmp_path / "two")
  backbone_slots = [k for k in split if "/.OPTIMIZER_SLOT/optimizer/backbone_optimizer/" in k]
  assert len(backbone_slots) == 2 * sum(steps[0.1]["backbone"])


def _optimizer_values(optimizer) -> list:
  return [v.numpy() for v in optimizer.variables() +
          backbone_optimizer_of(optimizer).variables()]


def test_a_restore_brings_back_both_optimizers_slots_and_steps(steps, tmp_path):
  trained = steps[0.1]
  path = tf.train.Checkpoint(model=trained["model"], optimizer=trained["optimizer"]).save(
      str(tmp_path / "ckpt"))
  model, optimizer, _ = _setup(0.1)  # slots built up-front, all zero
  fresh = _optimizer_values(optimizer)
  tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).assert_consumed()
  restored, expected = _optimizer_values(optimizer), _optimizer_values(trained["optimizer"])
  assert len(restored) == len(expected) == len(fresh)
  assert all(np.array_equal(a, b) for a, b in zip(restored, expected))
  assert not all(np.array_equal(a, b) for a, b in zip(restored, fresh))
  assert int(backbone_optimizer_of(optimizer).iterations.numpy()) == 1


def test_a_model_without_a_backbone_is_refused_naming_the_binding():
  model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
  with pytest.raises(ValueError, match="backbone_learning_rate_multiplier = 0.1"):
    backbone_variables(model, 0.1)


def test_mirrored_mixed_float16_skips_an_overflow_in_both_and_then_splits_the_rate(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
             PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
  done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  figures = json.loads(done.stdout.strip().splitlines()[-1])
  print(figures)
  # The overflowing step: both optimizers skipped it, halved equal loss scales, counted it.
  assert figures["bad_step"] > 0 and figures["moved_after_skip"] == 0.0
  assert figures["scales"][0] == figures["scales"][1] == 2.0 ** 14
  assert figures["iterations"] == [2, 2]
  # The finite step: Adam's first real update is ~0.74 x the rate per weight (bias-corrected
  # at t=2), so the largest moves stand in the ratio of the rates.
  assert figures["backbone_move"] / figures["head_move"] == pytest.approx(0.1, rel=0.02)


def _mirrored_check() -> dict:
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  model, optimizer, trainer = _setup(0.1, strategy, "mixed_float16")
  backbone = backbone_optimizer_of(optimizer)
  iterator = _batches(model, strategy, 4, poison_first=True)
  before = [v.numpy() for v in model.trainable_variables]
  bad_step = _eager_step(trainer, iterator)
  moved = max(float(np.abs(v.numpy() - b).max())
              for v, b in zip(model.trainable_variables, before))
  scales = [float(optimizer.loss_scale), float(backbone.loss_scale)]
  _eager_step(trainer, iterator)
  inside = {v.ref() for v in model.backbone.trainable_variables}
  moves = {True: 0.0, False: 0.0}
  for v, b in zip(model.trainable_variables, before):
    moves[v.ref() in inside] = max(moves[v.ref() in inside], float(np.abs(v.numpy() - b).max()))
  return {"bad_step": int(bad_step), "moved_after_skip": moved, "scales": scales,
          "iterations": [int(optimizer.iterations.numpy()), int(backbone.iterations.numpy())],
          "backbone_move": moves[True], "head_move": moves[False]}


if __name__ == "__main__":
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  print(json.dumps(_mirrored_check()))
