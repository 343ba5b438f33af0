"""SIGTERM to a real `python -m detlab.train`: it saves a checkpoint, exits with 42 (not 0:
a scheduler must see that it did not finish), and the same command resumes from that step."""
import os
import re
import signal
import subprocess
import sys
import time

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


def test_sigterm_saves_exits_42_and_the_next_start_resumes(tmp_path, shapes_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  log = open(tmp_path / "log.txt", "w+")
  process = subprocess.Popen(_command(tmp_path, shapes_dir, 1000), stdout=log,
                             stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
      if re.search(r"train 3/1000 steps", (tmp_path / "log.txt").read_text()):
        break
      time.sleep(0.5)
    assert process.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == PREEMPTED_EXIT_CODE == 42
  finally:
    if process.poll() is None:
      process.kill()
  output = (tmp_path / "log.txt").read_text()
  assert "stopped on SIGTERM; checkpoint saved" in output, output[-3000:]
  saved = int(tf.train.latest_checkpoint(str(tmp_path)).rsplit("-", 1)[1])
  assert 3 <= saved < 1000  # not only the start checkpoint, not a finished run

  result = subprocess.run(_command(tmp_path, shapes_dir, saved + 2), capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming at step {saved} of {saved + 2}" in result.stderr
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{saved + 2}")
