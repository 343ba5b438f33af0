"""SIGTERM to a real `python -m detlab.train`: it saves a checkpoint, exits with 42 (not 0:
a scheduler must see that it did not finish), and the same command resumes from that step."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from detlab.training.preemption import PREEMPTED_EXIT_CODE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _command(model_dir, shapes_dir, train_steps):
  bindings = [
      f"TRAIN_FILE_PATTERN='{shapes_dir}/train-*'", f"EVAL_FILE_PATTERN='{shapes_dir}/val-*'",
      f"train.label_map_file='{shapes_dir}/label_map.json'",
      f"train.annotation_file='{shapes_dir}/val_annotations.json'",
      "import tests.training.tiny_backbone", "efficientdet.backbone_fn=@tiny_test_backbone",
      "IMAGE_SIZE=64", "efficientdet.max_level=5", "efficientdet.fpn_width=16",
      "efficientdet.fpn_cells=1",
      "efficientdet.head_repeats=1", "Schedule.batch_size=2", "Schedule.steps_per_loop=1",
      "Schedule.log_every_steps=1", "Schedule.checkpoint_every_steps=1000",
      f"Schedule.train_steps={train_steps}", "train/InputConfig.shuffle_buffer=32"]
  return ([sys.executable, "-m", "detlab.train", "--gin_file=efficientdet_d0_shapes.gin",
           f"--model_dir={model_dir}", "--mode=train"] +
          [f"--gin_bindings={b}" for b in bindings])


def _wait_for_line(process, log_path, pattern: str, timeout_s: float) -> None:
  """Polls the process's log for `pattern`; fails, with the log's tail, when the process
  exits first or `timeout_s` passes."""
  deadline = time.monotonic() + timeout_s
  while not re.search(pattern, log_path.read_text()):
    if process.poll() is not None:
      pytest.fail(f"train exited ({process.returncode}) before logging {pattern!r}:\n"
                  f"{log_path.read_text()[-3000:]}")
    if time.monotonic() > deadline:
      pytest.fail(f"no {pattern!r} in the log after {timeout_s} s:\n"
                  f"{log_path.read_text()[-3000:]}")
    time.sleep(0.2)


def test_sigterm_saves_exits_42_and_the_next_start_resumes(tmp_path, shapes_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  log_path = tmp_path / "log.txt"
  with open(log_path, "w") as log:
    process = subprocess.Popen(_command(tmp_path, shapes_dir, 1000), stdout=log,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  try:
    # train() installs its SIGTERM handler before it builds anything, so once steps are
    # logged the signal is handled (and a checkpoint past the start one can be saved).
    _wait_for_line(process, log_path, r"train 3/1000 steps", timeout_s=300)
    process.send_signal(signal.SIGTERM)
    try:
      code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
      pytest.fail(f"no exit 120 s after SIGTERM:\n{log_path.read_text()[-3000:]}")
    assert code == PREEMPTED_EXIT_CODE == 42, log_path.read_text()[-3000:]
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  output = (tmp_path / "log.txt").read_text()
  assert "stopped on SIGTERM; checkpoint saved" in output, output[-3000:]
  saved = int(tf.train.latest_checkpoint(str(tmp_path)).rsplit("-", 1)[1])
  assert 3 <= saved < 1000  # not only the start checkpoint, not a finished run

  result = subprocess.run(_command(tmp_path, shapes_dir, saved + 2), capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming at step {saved} of {saved + 2}" in result.stderr
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{saved + 2}")
