"""`python -m detlab.train --gin_file=segmentation_d0_shapes.gin` trains and evaluates a
segmenter through the shared training root (tiny built-in shapes set with semantic maps)."""
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def semantic_shapes(tmp_path_factory):
  from data_tools.make_shapes_dataset import make_dataset
  out = str(tmp_path_factory.mktemp("shapes_seg"))
  make_dataset(out, num_train=8, num_val=4, num_shards=1, workers=1, semantic_maps=True)
  return out


def test_segmenter_trains_and_writes_miou_and_png(tmp_path, semantic_shapes):
  d = semantic_shapes
  bindings = [f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'",
              "IMAGE_SIZE=64", "Schedule.batch_size=2", "Schedule.train_steps=2",
              "Schedule.steps_per_loop=1", "Schedule.log_every_steps=1",
              "Schedule.checkpoint_every_steps=2", "segmenter.fpn_cells=1",
              "segmenter.head_repeats=1"]
  args = [sys.executable, "-m", "detlab.train", "--gin_file=segmentation_d0_shapes.gin",
          f"--model_dir={tmp_path}"] + [f"--gin_bindings={b}" for b in bindings]
  result = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["step"] == 2 and metrics["weights"] == "EMA"
  assert len(metrics["per_class_iou"]) == 5 and metrics["metrics"]["num_images"] == 4
  assert 0.0 <= metrics["pixel_accuracy"] <= 1.0
  present = [v for v in metrics["per_class_iou"] if v is not None]
  assert metrics["mIoU"] == pytest.approx(sum(present) / len(present))
  assert (tmp_path / "eval_segmentation.png").exists()
  assert "mIoU" in result.stdout and "Step 2 (EMA weights)" in result.stdout
