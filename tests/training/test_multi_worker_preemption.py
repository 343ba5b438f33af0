"""Preemption agreed across workers and checkpoints that move between strategies (issue 23).

Two `python -m detlab.train` workers on loopback (TF_CONFIG, multi_worker_mirrored, one CPU
replica each): SIGTERM to the non-chief only, and in another job to the chief only -> both
workers save the same step and exit 42 (a worker that stopped alone would leave its peer in the
next loop's all-reduce). The two-worker checkpoint then resumes in one process, and a
one-process checkpoint under MirroredStrategy on two logical CPUs, exactly (model, optimizer
with its step, EMA), the input stream restarting with a warning."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from detlab.training import experiment
from detlab.training.preemption import PREEMPTED_EXIT_CODE

from strategy_resume_check import differences, record_restored  # pylint: disable=import-error
from test_distribution import _dying_with_this_process, _held_ports, _run_together  # pylint: disable=import-error
from tiny_backbone import tiny_bindings  # pylint: disable=import-error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
LOGGED = re.compile(r"train (\d+)/1000 steps")


def _worker_command(model_dir, shapes_dir) -> list:
  bindings = ["import tests.training.tiny_backbone", *tiny_bindings(
      shapes_dir, "train.strategy = 'multi_worker_mirrored'", "Schedule.train_steps = 1000",
      "Schedule.log_every_steps = 1", "Schedule.checkpoint_every_steps = 1000")]
  return [sys.executable, "-m", "detlab.train", "--gin_file=efficientdet_d0_shapes.gin",
          f"--model_dir={model_dir}", "--mode=train",
          *[f"--gin_bindings={b}" for b in bindings]]


def _logged(log) -> int:
  return max([int(n) for n in LOGGED.findall(log.read_text())] or [0])


def _preempt_one_worker(model_dir, shapes_dir, tmp_path, signalled: int) -> dict:
  """Runs two workers until both logged step 3, SIGTERMs worker `signalled` only; returns
  {"codes", "stopped" (each worker's 'Stopped at step' number), "saved" (each worker's last
  saved checkpoint number), "signalled_after" (the last step logged before the signal)}."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_GRPC_REUSE_PORT="1")
  logs = [tmp_path / f"{model_dir.name}_worker{i}.log" for i in range(2)]
  processes = []
  with _held_ports(2) as ports:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    try:
      for index, log_path in enumerate(logs):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        with open(log_path, "w") as log:
          processes.append(subprocess.Popen(
              _dying_with_this_process(_worker_command(model_dir, shapes_dir)), stdout=log,
              stderr=subprocess.STDOUT, cwd=ROOT, env=dict(env, TF_CONFIG=json.dumps(config))))
      deadline = time.monotonic() + 400
      while min(_logged(log) for log in logs) < 3:
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
          pytest.fail("workers did not reach step 3:\n" + "\n".join(
              f"--- worker{i} ({p.poll()}):\n{log.read_text()[-2500:]}"
              for i, (p, log) in enumerate(zip(processes, logs))))
        time.sleep(0.2)
      signalled_after = max(_logged(log) for log in logs)
      processes[signalled].send_signal(signal.SIGTERM)
      deadline = time.monotonic() + 240
      while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    finally:
      for process in processes:
        if process.poll() is None:
          process.kill()
        process.wait()
  texts = [log.read_text() for log in logs]

  def last(pattern, text):
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None
  return {"codes": [p.returncode for p in processes], "signalled_after": signalled_after,
          "stopped": [last(r"Stopped at step (\d+) of 1000", t) for t in texts],
          "saved": [last(r"Saved \S*ckpt-(\d+)", t) for t in texts], "logs": texts}


@pytest.mark.parametrize("signalled", [1, 0], ids=["non_chief_signalled", "chief_signalled"])
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_one_process_resumes(
    tmp_path, shapes_dir, run_train, monkeypatch, signalled):
  model_dir = tmp_path / "job"
  run = _preempt_one_worker(model_dir, shapes_dir, tmp_path, signalled)
  tails = "\n".join(f"--- worker{i}:\n{t[-2500:]}" for i, t in enumerate(run.pop("logs")))
  assert run["codes"] == [PREEMPTED_EXIT_CODE] * 2, (run, tails)
  step = run["stopped"][0]
  assert run["stopped"] == [step, step] and run["saved"] == [step, step], (run, tails)
  # Within one loop (steps_per_loop = 1) of the signal, give or take the loop in flight.
  assert run["signalled_after"] <= step <= run["signalled_after"] + 2, (run, tails)
  checkpoint = tf.train.latest_checkpoint(str(model_dir))
  assert checkpoint.endswith(f"ckpt-{step}"), checkpoint
  assert not list(model_dir.glob("workertemp_*"))  # the non-chief removed its own
  if signalled == 0:
    return  # one resume in one process is enough (the non-chief case's)

  # One process resumes the two workers' checkpoint (no input position in it) exactly.
  warnings = []
  monkeypatch.setattr(experiment.logging, "warning",
                      lambda message, *args: warnings.append(message % args))
  state = record_restored(monkeypatch, experiment, str(model_dir))
  results = run_train(model_dir, "train", f"Schedule.train_steps = {step + 1}")
  assert not results["preempted"]
  differ, compared = differences(checkpoint, state)
  assert compared > 50 and not differ, differ[:10]
  assert any(w.startswith(f"Resumed step {step} without an input position") for w in warnings)
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{step + 1}")


def test_a_one_process_checkpoint_resumes_under_mirrored_on_two_devices(
    tmp_path, shapes_dir, run_train):
  model_dir = tmp_path / "one"
  run_train(model_dir, "train", "Schedule.train_steps = 2")
  command = [sys.executable, os.path.join(HERE, "strategy_resume_check.py"), str(model_dir),
             shapes_dir, "3"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  stdout = _run_together({"mirrored": (command, env)}, tmp_path)["mirrored"]
  figures = json.loads(stdout.strip().splitlines()[-1])
  assert figures["replicas"] == 2 and figures["restored_from"] == "ckpt-2", figures
  assert figures["compared"] > 50 and not figures["differences"], figures
  assert any(w.startswith("Resumed step 2 without an input position") for w in
             figures["warnings"]), figures
  assert figures["final"] == "ckpt-3" and not figures["preempted"], figures
