"""Distribution and numerics: MirroredStrategy over two logical CPUs matches the default
strategy; mixed precision keeps losses and detections float32; the XLA step compiles.

The checks that need a fresh process run through `_run_together`: output to files, every
process killed and reaped on a failure or timeout, output tails in the failure; the two
workers' ports stay held from the moment they are picked (`_held_ports`)."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

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


@contextlib.contextmanager
def _held_ports(count: int):
  """Yields `count` free ports, each held by a bound socket until the block ends.

  Binding, closing and handing out a port leaves a window in which another process can
  take it. Here the port stays bound the whole time -- with SO_REUSEPORT and not listening --
  so no other bind (port 0 picks, or one without SO_REUSEPORT) gets it, while the workers,
  started with TF_GRPC_REUSE_PORT=1 (their gRPC server then sets SO_REUSEPORT too), bind it
  beside ours. Connections go to listening sockets only: ours never receives one.
  """
  sockets = []
  try:
    for _ in range(count):
      held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sockets.append(held)
      held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      held.bind(("127.0.0.1", 0))
    yield [held.getsockname()[1] for held in sockets]
  finally:
    for held in sockets:
      held.close()


def _tail(path, chars: int = 2000) -> str:
  return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# Each child first runs this, then execs its command: Linux's PR_SET_PDEATHSIG makes the
# kernel SIGKILL it when the test process dies, so a pytest that is itself killed (an outer
# timeout, Ctrl-C twice) leaves no worker behind either; it runs before exec in a fresh,
# single-threaded interpreter, not in a preexec_fn forked from TF's threads.
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys\n"
                    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG\n"
                    "if os.getppid() != int(sys.argv[1]):  # the parent died before prctl\n"
                    "  sys.exit(1)\n"
                    "os.execv(sys.argv[2], sys.argv[2:])\n")


def _dying_with_this_process(argv: list) -> list:
  if not sys.platform.startswith("linux"):
    return argv
  return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


def _run_together(commands: dict, tmp_path, timeout_s: float = 600) -> dict:
  """Runs every command (name -> (argv, env)) at once, each writing stdout and stderr to its
  own files (no pipe that a chatty process could fill and then block on), until all exit.
  When one fails or `timeout_s` passes, every process still running is killed and reaped,
  and the failure shows each one's status and output tails. Returns name -> stdout text.
  The limit is generous: a check that takes about a minute took over 300 s on 2 cores with
  a dozen busy processes beside it; it is there to end a hang, not to time the run."""
  out = {name: tmp_path / f"{name}.stdout" for name in commands}
  err = {name: tmp_path / f"{name}.stderr" for name in commands}
  processes, killed = {}, set()
  try:
    for name, (argv, env) in commands.items():
      with open(out[name], "w") as stdout, open(err[name], "w") as stderr:
        processes[name] = subprocess.Popen(_dying_with_this_process(argv), env=env,
                                           stdout=stdout, stderr=stderr)
    deadline = time.monotonic() + timeout_s
    while (any(p.poll() is None for p in processes.values()) and
           all(p.poll() in (None, 0) for p in processes.values()) and  # none failed
           time.monotonic() < deadline):
      time.sleep(0.2)
  finally:
    for name, process in processes.items():
      if process.poll() is None:
        process.kill()
        killed.add(name)
      process.wait()
  if killed or any(p.returncode != 0 for p in processes.values()):
    status = {name: "killed" if name in killed else f"exit {p.returncode}"
              for name, p in processes.items()}
    report = "\n".join(f"--- {name} ({status[name]}) stdout:\n{_tail(out[name])}\n"
                       f"--- {name} stderr:\n{_tail(err[name])}" for name in processes)
    pytest.fail(f"{status} (killed: still running when another failed or after "
                f"{timeout_s} s)\n{report}")
  return {name: path.read_text() for name, path in out.items()}


def _run_check(script: str, tmp_path) -> dict:
  """One check script in a fresh process -> the JSON figures on its last stdout line."""
  path = os.path.join(os.path.dirname(__file__), script)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  stdout = _run_together({"check": ([sys.executable, path], env)}, tmp_path)["check"]
  return json.loads(stdout.strip().splitlines()[-1])


def test_mirrored_two_replicas_match_the_default_strategy(tmp_path):
  figures = _run_check("mirrored_check.py", tmp_path)
  print(figures)
  assert figures["max_update"] > 100 * MIRRORED_TOLERANCE  # the steps did change the weights
  assert figures["max_weight_diff"] < MIRRORED_TOLERANCE, figures
  assert figures["max_ema_diff"] < MIRRORED_TOLERANCE, figures
  assert figures["loss_single"] == pytest.approx(figures["loss_mirrored"], rel=1e-4)


def _flat(values: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a/b": 1}."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def test_every_task_evaluates_per_replica_with_the_one_replica_metrics(tmp_path):
  """Issue 22: classification, segmentation, joint and detection evaluation on a 2-replica
  strategy (two logical CPUs) give the same metrics as one replica (<= 1e-6)."""
  figures = _run_check("mirrored_eval_check.py", tmp_path)
  assert figures["replicas"] == [0, 1]  # predict ran inside strategy.run on both
  results = figures["results"]
  assert sorted(results) == ["classification", "detection", "joint", "segmentation"]
  for task, both in results.items():
    mirrored, default = both["mirrored"], both["default"]
    assert mirrored["metrics"].keys() == default["metrics"].keys(), task
    for name, value in default["metrics"].items():
      assert value is not None, (task, name)
      assert abs(mirrored["metrics"][name] - value) <= 1e-6, (task, name, mirrored, default)
    # approx takes flat mappings only; detection's extra nests per_class_AP.
    assert _flat(mirrored["extra"]) == pytest.approx(_flat(default["extra"]), abs=1e-6), task
  # Metrics that could hide a broken split: the detections found their own boxes (AP well
  # above chance), and the classification loss is a float sum over every image.
  assert results["detection"]["default"]["metrics"]["AP50"] > 0.3, results["detection"]
  assert results["joint"]["default"]["metrics"]["AP50"] > 0.3, results["joint"]
  assert results["classification"]["default"]["metrics"]["num_examples"] == 9
  assert results["segmentation"]["default"]["metrics"]["num_images"] == 9


def _one_step(model, optimizer, jit_compile=False):
  task = DetectionTask(DetectionLoss(), PostprocessConfig())
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
  detections = task.detect(model, batch["images"])
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


# Two worker processes, one replica each; the same tolerance as the mirrored check.
MULTI_WORKER_TOLERANCE = 1e-4


def test_two_workers_end_identical_and_match_one_process_at_the_same_global_batch(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "multi_worker_check.py")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  commands = {"single": ([sys.executable, script, str(tmp_path / "single.npz"), "--single"],
                         env)}
  with _held_ports(2) as ports:
    workers = [f"127.0.0.1:{port}" for port in ports]
    for index in range(2):
      config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
      commands[f"worker{index}"] = (
          [sys.executable, script, str(tmp_path / f"worker{index}.npz")],
          dict(env, TF_CONFIG=json.dumps(config), TF_GRPC_REUSE_PORT="1"))
    _run_together(commands, tmp_path)

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
