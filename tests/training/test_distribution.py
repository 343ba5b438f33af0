"""Distribution and numerics: MirroredStrategy over two logical CPUs matches the default
strategy; mixed precision keeps losses and detections float32; the XLA step compiles."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.benchmark import synthetic_train_batch
from detlab.data.source_id import decode_source_ids
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig
from detlab.tasks.detection import DetectionTask
from detlab.training.loop import Trainer

# Same global batch, same data: only the order of floating-point sums differs (gradients
# all-reduced across the replicas, sync BN statistics).
MIRRORED_TOLERANCE = 1e-4


def test_mirrored_two_replicas_match_the_default_strategy():
  script = os.path.join(os.path.dirname(__file__), "mirrored_check.py")
  result = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  print(figures)
  assert figures["max_update"] > 100 * MIRRORED_TOLERANCE  # the steps did change the weights
  assert figures["max_weight_diff"] < MIRRORED_TOLERANCE, figures
  assert figures["max_ema_diff"] < MIRRORED_TOLERANCE, figures
  assert figures["loss_single"] == pytest.approx(figures["loss_mirrored"], rel=1e-4)


def test_evaluation_detects_per_replica_under_mirrored_with_one_device_detections():
  script = os.path.join(os.path.dirname(__file__), "mirrored_eval_check.py")
  result = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  print(figures)
  assert figures["replicas"] == [0, 1]  # the network ran inside strategy.run on both
  assert figures["shapes_equal"] and min(figures["num_detections"]) > 0
  assert set(figures["keys"]) >= {"boxes", "scores", "classes", "num_detections"}
  # Same parts on the same CPU kernels: equal up to float noise, boxes in pixels.
  assert all(diff < 1e-4 for diff in figures["max_diff"].values()), figures["max_diff"]


def _one_step(model, optimizer, jit_compile=False):
  task = DetectionTask(model, DetectionLoss(), PostprocessConfig())
  trainer = Trainer(tf.distribute.get_strategy(), model, optimizer, task.compute_loss, 4e-5,
                    10.0, jit_compile=jit_compile)
  batch = synthetic_train_batch(model, 2)
  bad_step, bad = trainer.train_steps(iter(tf.data.Dataset.from_tensors(batch).repeat()),
                                      tf.constant(1))
  return task, trainer, batch, int(bad_step), bad


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_losses_and_detections_float32(tiny_detector, policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = tiny_detector()
    optimizer = keras.optimizers.SGD(0.01)
    if policy == "mixed_float16":
      optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert model.class_net.compute_dtype == policy.split("_")[1]
  assert all(v.dtype == tf.float32 for v in model.variables)
  task, trainer, batch, bad_step, bad = _one_step(model, optimizer)
  assert bad_step == 0 and bad.shape[0] == 0
  assert np.isfinite(trainer.results()["total"])
  losses = task.compute_loss(model, batch, training=False)
  assert losses["total"].dtype == tf.float32
  detections = task.detect(batch["images"])
  assert detections["boxes"].dtype == tf.float32 and detections["scores"].dtype == tf.float32


def test_jit_compiled_step_matches_the_plain_step(tiny_detector):
  weights, initial = [], None
  for jit in (False, True):
    keras.utils.set_random_seed(0)
    model = tiny_detector()
    if initial is None:
      initial = [v.numpy() for v in model.trainable_variables]
    _, trainer, batch, bad_step, _ = _one_step(model, keras.optimizers.SGD(0.01),
                                               jit_compile=jit)
    assert bad_step == 0
    weights.append([v.numpy() for v in model.trainable_variables])
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))
  # Both steps moved the weights (a step that did nothing would match trivially) ...
  moved = [max(float(np.max(np.abs(a - b))) for a, b in zip(w, initial)) for w in weights]
  assert min(moved) > 100 * 1e-4, moved
  # ... and the same way.
  assert diff < 1e-4, diff
  # The compiled step (a TPU's form: no strings, ids as int32 codes inside) names a bad batch.
  bad_batch = dict(batch, images=batch["images"] * np.nan)
  bad_step, bad = trainer.train_steps(iter(tf.data.Dataset.from_tensors(bad_batch).repeat()),
                                      tf.constant(3))
  assert int(bad_step) == 1
  assert decode_source_ids(bad.numpy()) == ["synthetic-0", "synthetic-1"]


def _free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


# Two worker processes, one replica each; the same tolerance as the mirrored check.
MULTI_WORKER_TOLERANCE = 1e-4


def test_two_workers_end_identical_and_match_one_process_at_the_same_global_batch(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "multi_worker_check.py")
  workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  processes = []
  for index in range(2):
    config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    processes.append(subprocess.Popen(
        [sys.executable, script, str(tmp_path / f"worker{index}.npz")],
        env=dict(env, TF_CONFIG=json.dumps(config)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  single = subprocess.run([sys.executable, script, str(tmp_path / "single.npz"), "--single"],
                          env=env, capture_output=True, text=True, timeout=300)
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]

  runs = [np.load(tmp_path / name) for name in ("worker0.npz", "worker1.npz", "single.npz")]
  names = [k for k in runs[2].files if k.startswith(("weight_", "ema_"))]
  # Both workers hold bitwise the same weights and EMA shadows after the all-reduced steps.
  assert all(np.array_equal(runs[0][k], runs[1][k]) for k in names)
  # They match the single process within float summation-order noise ...
  diff = max(float(np.max(np.abs(runs[0][k] - runs[2][k]))) for k in names)
  # ... while the two steps moved the weights far more than that.
  moved = max(float(np.max(np.abs(runs[2][k] - runs[2][k.replace("weight", "initial")])))
              for k in names if k.startswith("weight_"))
  # Each worker reports its share N * S_w / (P_global + 1); their mean is the global loss.
  worker_mean_loss = (float(runs[0]["loss"]) + float(runs[1]["loss"])) / 2
  print({"max_weight_diff_vs_single": diff, "max_update": moved,
         "loss_workers_mean": worker_mean_loss, "loss_single": float(runs[2]["loss"])})
  assert moved > 100 * MULTI_WORKER_TOLERANCE
  assert diff < MULTI_WORKER_TOLERANCE, diff
  assert worker_mean_loss == pytest.approx(float(runs[2]["loss"]), rel=1e-4)
