"""`python -m detlab.train --gin_file=joint_d0_shapes.gin` trains the joint detector +
segmenter (tiny backbone, 64 px, 2 steps) and writes both metric sets: COCO AP and mIoU /
per-class IoU / pixel accuracy in metrics.json and TensorBoard, and both PNGs."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def semantic_shapes(tmp_path_factory):
  from data_tools.make_shapes_dataset import make_dataset
  out = str(tmp_path_factory.mktemp("shapes_joint"))
  make_dataset(out, num_train=8, num_val=4, num_shards=1, workers=1, semantic_maps=True)
  return out


def _scalar_tags(directory: str) -> set:
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.mark.slow  # a training subprocess: TF import, two traces, COCO + mIoU evaluation
def test_joint_model_trains_and_writes_both_metric_sets(tmp_path, semantic_shapes):
  d = semantic_shapes
  bindings = ["import tests.training.tiny_backbone",
              "joint_detector_segmenter.backbone_fn=@tiny_test_backbone",
              f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'",
              f"JointTask.label_map_file='{d}/label_map.json'",
              f"JointTask.annotation_file='{d}/val_annotations.json'",
              "IMAGE_SIZE=64", "joint_detector_segmenter.max_level=5",
              "joint_detector_segmenter.fpn_width=16", "joint_detector_segmenter.fpn_cells=1",
              "joint_detector_segmenter.head_repeats=1",
              "joint_detector_segmenter.seg_head_width=16",
              "joint_detector_segmenter.seg_head_repeats=1", "JointTask.seg_loss_weight=0.5",
              "Schedule.batch_size=2", "Schedule.train_steps=2", "Schedule.steps_per_loop=1",
              "Schedule.log_every_steps=1", "Schedule.checkpoint_every_steps=2"]
  args = [sys.executable, "-m", "detlab.train", "--gin_file=joint_d0_shapes.gin",
          f"--model_dir={tmp_path}"] + [f"--gin_bindings={b}" for b in bindings]
  result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["step"] == 2 and metrics["weights"] == "EMA"
  # Detection: the 12 COCO numbers and per-class AP by name.
  assert set(metrics["per_class_AP"]) == {"ellipse", "rectangle", "triangle", "cross"}
  assert -1.0 <= metrics["AP"] <= 1.0 and "AP50" in metrics["metrics"]
  # Segmentation: mIoU over the present classes, per-class IoU, pixel accuracy.
  assert len(metrics["per_class_iou"]) == 5 and metrics["metrics"]["num_images"] == 4
  present = [v for v in metrics["per_class_iou"] if v is not None]
  assert metrics["mIoU"] == pytest.approx(sum(present) / len(present))
  assert 0.0 <= metrics["pixel_accuracy"] <= 1.0
  for png in ("eval_detections.png", "eval_segmentation.png", "eval_joint.png"):
    assert (tmp_path / png).exists(), png
  tags = _scalar_tags(str(tmp_path / "eval"))
  assert {"joint/AP", "joint/mIoU", "joint/pixel_accuracy", "joint"} <= tags
  assert {"loss/detection", "loss/segmentation"} <= _scalar_tags(str(tmp_path / "train"))
  assert "mIoU" in result.stdout and "AP" in result.stdout
