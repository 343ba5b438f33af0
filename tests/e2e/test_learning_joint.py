"""Joint learning gate: a real `python -m detlab.train` run of joint_d0_shapes.gin (one BiFPN
feeding detection and segmentation heads) on the built-in shapes set with semantic maps must
learn both tasks (AP50, AP and mIoU floors), and writes both metric sets (metrics.json and
TensorBoard) and the three PNGs.

The run: tests/e2e/learning_backbone.py's small ReLU conv net in place of EfficientNet-B0,
64 px, BiFPN P2..P5 32 wide x 1 cell, box/class heads 1 deep, segmentation head 32 x 1, 400
Adam steps of batch 8 (lr 0.064 per 64 images) on 256 train images, evaluated (EMA weights)
on 32 val images. An untrained detector scores AP50 ~0; predicting background everywhere
scores mIoU = background fraction / 5 = 0.154 / 0.157 / 0.162 on data seeds 0 / 1 / 2.

AP50 and mIoU at step 400, measured with
  TF_NUM_INTRAOP_THREADS=1 python -m detlab.train <the bindings below> train.seed=T
on the data set written by make_dataset(seed=D, num_train=256, num_val=32, semantic_maps=True):
  D=0, T=1: AP50 0.128 (AP 0.056), mIoU 0.243
  D=1, T=2: AP50 0.107 (AP 0.044), mIoU 0.224
  D=2, T=3: AP50 0.143 (AP 0.048), mIoU 0.231
(after the focal loss became one compiled pass; the code just before it gave D=1, T=2: AP50
0.126, AP 0.045, mIoU 0.231: float rounding moves a run by ~0.02.)
Floors: AP50 0.07 (worst 0.107 minus 0.037), AP 0.03 (worst 0.044 minus 0.014), mIoU 0.215
(worst 0.224 minus 0.009; the broken build below scores 0.207, so the floor cannot go much
lower). A broken build falls below them: training boxes with y and x
swapped in the detection targets plus shape labels shifted by one in the joint parser give
AP50 0.060, AP 0.014, mIoU 0.207 (D=0, T=1). What it does not catch: class ids offset by one
in the detection targets alone gave AP50 0.118, AP 0.048 (with the label shift: mIoU 0.208):
at 64 px in 400 steps the detector finds the shapes but hardly tells them apart, so this
gate guards localisation and the segmentation labels, not the detection class order.
"""
import json
import os

import pytest
import tensorflow as tf

import e2e_cli  # pylint: disable=import-error  (tests/e2e/e2e_cli.py)

DATA_SEED, TRAIN_SEED = 0, 1
NUM_TRAIN, NUM_VAL, STEPS = 256, 32, 400
AP50_FLOOR, AP_FLOOR, MIOU_FLOOR = 0.07, 0.03, 0.215  # worst seeds minus the margins
TRAIN_BINDINGS = [
    "import tests.e2e.learning_backbone",
    "joint_detector_segmenter.backbone_fn = @small_test_convnet", "IMAGE_SIZE = 64",
    "joint_detector_segmenter.max_level = 5", "joint_detector_segmenter.fpn_width = 32",
    "joint_detector_segmenter.fpn_cells = 1", "joint_detector_segmenter.head_repeats = 1",
    "joint_detector_segmenter.seg_head_width = 32",
    "joint_detector_segmenter.seg_head_repeats = 1", "Schedule.batch_size = 8",
    f"Schedule.train_steps = {STEPS}", f"Schedule.num_train_images = {NUM_TRAIN}",
    "Schedule.steps_per_loop = 25", "Schedule.log_every_steps = 25",
    "Schedule.checkpoint_every_steps = 400", "OptimizerConfig.learning_rate_per_64 = 0.064",
    f"train.seed = {TRAIN_SEED}"]


def _scalar_tags(directory: str) -> set:
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
  """(model_dir, metrics.json, the CompletedProcess) of the gate's training run."""
  from data_tools.make_shapes_dataset import make_dataset
  root = tmp_path_factory.mktemp("learning_joint")
  d, model_dir = root / "shapes", root / "run"
  make_dataset(str(d), num_train=NUM_TRAIN, num_val=NUM_VAL, num_shards=1, seed=DATA_SEED,
               workers=1, semantic_maps=True)
  bindings = [f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'",
              f"JointTask.label_map_file='{d}/label_map.json'",
              f"JointTask.annotation_file='{d}/val_annotations.json'"]
  result = e2e_cli.train("joint_d0_shapes.gin", model_dir, bindings + TRAIN_BINDINGS)
  return model_dir, json.loads((model_dir / "metrics.json").read_text()), result


@pytest.mark.slow  # the gate's training run: about a minute and a half of one CPU thread
def test_joint_model_learns_to_detect_and_segment(joint_run):
  _, metrics, _ = joint_run
  ap50, miou = metrics["metrics"]["AP50"], metrics["mIoU"]
  print("AP50", ap50, "AP", metrics["AP"], "per-class AP", metrics["per_class_AP"], "mIoU",
        miou, "per-class IoU", metrics["per_class_iou"])
  missed = [f"AP50 {ap50:.4f} < floor {AP50_FLOOR} (detection did not learn)"] * (
      ap50 < AP50_FLOOR) + [f"AP {metrics['AP']:.4f} < floor {AP_FLOOR} (boxes are off)"] * (
      metrics["AP"] < AP_FLOOR) + [f"mIoU {miou:.4f} < floor {MIOU_FLOOR} (segmentation did not "
                            "learn)"] * (miou < MIOU_FLOOR)
  assert not missed, "; ".join(missed)


@pytest.mark.slow
def test_joint_model_writes_both_metric_sets_and_pngs(joint_run):
  model_dir, metrics, result = joint_run
  assert metrics["step"] == STEPS and metrics["weights"] == "EMA"
  # Detection: the COCO numbers and per-class AP by name; AP (IoU .50:.95) <= AP50.
  assert set(metrics["per_class_AP"]) == {"ellipse", "rectangle", "triangle", "cross"}
  assert metrics["AP"] == metrics["metrics"]["AP"] <= metrics["metrics"]["AP50"]
  # Segmentation: mIoU over the present classes, per-class IoU.
  assert len(metrics["per_class_iou"]) == 5 and metrics["metrics"]["num_images"] == NUM_VAL
  present = [v for v in metrics["per_class_iou"] if v is not None]
  assert len(present) == 5  # 32 val images hold every shape
  assert metrics["mIoU"] == pytest.approx(sum(present) / len(present))
  for png in ("eval_detections.png", "eval_segmentation.png", "eval_joint.png"):
    assert (model_dir / png).exists(), png
  tags = _scalar_tags(str(model_dir / "eval"))
  assert {"joint/AP", "joint/mIoU", "joint/pixel_accuracy", "joint"} <= tags
  assert {"loss/detection", "loss/segmentation"} <= _scalar_tags(str(model_dir / "train"))
  assert "mIoU" in result.stdout and "AP" in result.stdout
