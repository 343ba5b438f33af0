"""`python -m detlab.train` end to end on the built-in data set: the files, TensorBoard tags,
resume, refusal and continuous evaluation a user relies on (tiny and short).

The detector is efficientdet_d0_shapes.gin (the main job's file, optimizer and data) with the
tests' tiny backbone and a 16-wide, one-cell BiFPN: building and tracing real D0 cost ~3x
this file's time, and what is checked here (the CLI, the model_dir, the messages) does not
depend on the backbone. D0 itself goes through the CLI in
tests/data_tools/test_convert_automl_checkpoint.py (eval and fine-tuning of a converted
checkpoint); whether training learns is the learning gates' job (test_learning_*.py).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image
import tensorflow as tf

from detlab.evaluation.coco_evaluator import METRIC_NAMES

import e2e_cli  # pylint: disable=import-error  (tests/e2e/e2e_cli.py)

SMALL_DETECTOR = [
    "import tests.training.tiny_backbone", "efficientdet.backbone_fn = @tiny_test_backbone",
    "efficientdet.fpn_width = 16", "efficientdet.fpn_cells = 1", "efficientdet.head_repeats = 1"]


def _run(model_dir, shapes_dir, *bindings, mode="train_and_eval", extra_flags=()):
  args = [sys.executable, "-m", "detlab.train", "--gin_file=efficientdet_d0_shapes.gin",
          f"--model_dir={model_dir}", f"--mode={mode}", *extra_flags]
  defaults = [
      f"TRAIN_FILE_PATTERN='{shapes_dir}/train-*'", f"EVAL_FILE_PATTERN='{shapes_dir}/val-*'",
      f"train.label_map_file='{shapes_dir}/label_map.json'",
      f"train.annotation_file='{shapes_dir}/val_annotations.json'",
      "IMAGE_SIZE=128", "Schedule.batch_size=2", "Schedule.steps_per_loop=2",
      "Schedule.log_every_steps=2", "Schedule.checkpoint_every_steps=2", *SMALL_DETECTOR]
  args += [f"--gin_bindings={b}" for b in defaults + list(bindings)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600,
                        cwd=e2e_cli.REPO)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dir):
  model_dir = tmp_path_factory.mktemp("run")
  result = _run(model_dir, shapes_dir, "Schedule.train_steps=4", "Schedule.eval_every_steps=2")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


@pytest.fixture
def own_copy(trained, tmp_path):
  """A copy of the trained model_dir for a test that writes to it (a resumed run adds
  ckpt-6, an evaluation adds events), so no other test sees what it wrote, whatever the
  order."""
  model_dir, _ = trained
  return shutil.copytree(model_dir, tmp_path / "run")


def test_train_and_eval_leaves_everything_a_user_needs(trained):
  model_dir, result = trained
  files = set(os.listdir(model_dir))
  assert {"ckpt-4.index", "checkpoint", "operative_config.gin", "config.gin", "metrics.json",
          "eval_detections.png", "variables.json"} <= files
  assert os.listdir(model_dir / "train") and os.listdir(model_dir / "eval")  # events
  operative = (model_dir / "operative_config.gin").read_text()
  # The gin file's own values (not only the command's bindings) are recorded.
  assert "OptimizerConfig.name = 'adam'" in operative
  assert "efficientdet.backbone_fn = @tiny_test_backbone" in operative
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert tuple(metrics["metrics"]) == METRIC_NAMES
  assert set(metrics["per_class_AP"]) == {"ellipse", "rectangle", "triangle", "cross"}
  assert metrics["step"] == 4 and metrics["nms"] == "soft" and metrics["weights"] == "EMA"
  # Evaluated at step 2 (eval_every_steps) and at the end; the best of them kept apart.
  assert "Step 2 (EMA weights)" in result.stdout and "Step 4 (EMA weights)" in result.stdout
  best = json.loads((model_dir / "best" / "metrics.json").read_text())
  assert best["step"] in (2, 4) and (model_dir / "best" / f"{best['checkpoint']}.index").exists()
  assert "AP   AP50   AP75" in result.stdout and "ETA" in result.stderr
  with Image.open(model_dir / "eval_detections.png") as png:
    assert png.size[0] >= 4 * 128


def _tags(events_dir) -> set:
  tags = set()
  for name in os.listdir(events_dir):
    for event in tf.compat.v1.train.summary_iterator(str(events_dir / name)):
      tags |= {value.tag for value in event.summary.value}
  return tags


def test_tensorboard_has_losses_lr_gradient_norm_coco_metrics_and_detection_images(trained):
  model_dir, _ = trained
  assert {"loss/total", "loss/class", "loss/box", "learning_rate", "grad_norm"} <= \
      _tags(model_dir / "train")
  assert {"coco/AP", "coco/AP50", "detections"} <= _tags(model_dir / "eval")


def test_a_second_start_resumes_from_the_latest_checkpoint(own_copy, shapes_dir):
  model_dir = own_copy
  result = _run(model_dir, shapes_dir, "Schedule.train_steps=6", mode="train")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming at step 4 of 6" in result.stderr
  assert "ckpt-6.index" in os.listdir(model_dir)


def test_a_checkpoint_of_another_model_is_refused_with_the_differences(own_copy, shapes_dir):
  model_dir = own_copy
  result = _run(model_dir, shapes_dir, "NUM_CLASSES=5", mode="eval")
  assert result.returncode != 0
  assert "does not fit this model" in result.stderr
  assert "class_net/predict/pointwise_kernel:0 checkpoint [1, 1, 16, 36] vs model " \
         "[1, 1, 16, 45]" in result.stderr


def test_continuous_eval_evaluates_the_checkpoints_until_the_last_step(own_copy, shapes_dir):
  model_dir = own_copy
  result = _run(model_dir, shapes_dir, "Schedule.train_steps=4", "EmaConfig.evaluate_average=False",
                mode="eval", extra_flags=("--continuous", "--eval_timeout=5"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(raw weights)" in result.stdout
  assert "AP   AP50   AP75" in result.stdout
