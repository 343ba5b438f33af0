"""Segmentation learning gate: a real `python -m detlab.train` run of
segmentation_d0_shapes.gin on the built-in shapes set with semantic maps must learn to
segment the shapes (mIoU floor), and writes the metrics and PNG its model_dir promises.

The run: tests/e2e/learning_backbone.py's small ReLU conv net in place of EfficientNet-B0,
64 px, BiFPN P2..P5 32 wide x 1 cell, head 32 x 1, 400 Adam steps of batch 8 (lr 0.064 per
64 images) on 256 train images (the demo's BN momentum 0.9), evaluated (EMA weights, at the
original resolution) on 32 val images. Background + 4 shape classes; the val maps are 77-81 %
background, so a model that predicts background everywhere scores background IoU = that
fraction and 0 for the shapes: mIoU = fraction / 5 = 0.154 / 0.157 / 0.162 and pixel accuracy
0.768 / 0.783 / 0.808 on data seeds 0 / 1 / 2.

mIoU and pixel accuracy at step 400, measured with
  TF_NUM_INTRAOP_THREADS=1 python -m detlab.train <the bindings below> train.seed=T
on the data set written by make_dataset(seed=D, num_train=256, num_val=32, semantic_maps=True):
  D=0, T=1: mIoU 0.2427, pixel accuracy 0.788 (per class 0.839 0.066 0.184 0.118 0.006)
  D=1, T=2: mIoU 0.2456, pixel accuracy 0.799
  D=2, T=3: mIoU 0.2454, pixel accuracy 0.820
The mIoU floor is the worst of them minus a margin of 0.0127: 0.23 (the seeds agree within
0.003; all-background scores 0.154-0.162). The pixel-accuracy floor (worst minus 0.04: 0.75)
only catches a gross break: a model that learned little still gets the background right.
A broken build falls below the mIoU floor: training labels shifted by one shape class in the
segmentation parser give mIoU 0.2135 (D=0, T=1; per class 0.833 0.000 0.104 0.077 0.054):
the shapes are told apart only weakly at 64 px in 400 steps, so most of the mIoU is
shape-vs-background, and the margin on either side is about 0.013.
"""
import json

import pytest

import e2e_cli  # pylint: disable=import-error  (tests/e2e/e2e_cli.py)

DATA_SEED, TRAIN_SEED = 0, 1
NUM_TRAIN, NUM_VAL, STEPS = 256, 32, 400
MIOU_FLOOR = 0.23  # the module doc's worst seed (0.2427) minus a margin of 0.0127
PIXEL_ACCURACY_FLOOR = 0.75  # worst seed (0.788) minus 0.04
TRAIN_BINDINGS = [
    "import tests.e2e.learning_backbone", "segmenter.backbone_fn = @small_test_convnet",
    "IMAGE_SIZE = 64", "segmenter.max_level = 5", "segmenter.fpn_width = 32",
    "segmenter.fpn_cells = 1", "segmenter.head_width = 32", "segmenter.head_repeats = 1",
    "Schedule.batch_size = 8", f"Schedule.train_steps = {STEPS}",
    f"Schedule.num_train_images = {NUM_TRAIN}", "Schedule.steps_per_loop = 25",
    "Schedule.log_every_steps = 25", "Schedule.checkpoint_every_steps = 400",
    "OptimizerConfig.learning_rate_per_64 = 0.064", f"train.seed = {TRAIN_SEED}"]


@pytest.fixture(scope="module")
def segmenter_run(tmp_path_factory):
  """(model_dir, metrics.json, the CompletedProcess) of the gate's training run."""
  from data_tools.make_shapes_dataset import make_dataset
  root = tmp_path_factory.mktemp("learning_segmentation")
  d, model_dir = root / "shapes", root / "run"
  make_dataset(str(d), num_train=NUM_TRAIN, num_val=NUM_VAL, num_shards=1, seed=DATA_SEED,
               workers=1, semantic_maps=True)
  bindings = [f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'"]
  result = e2e_cli.train("segmentation_d0_shapes.gin", model_dir, bindings + TRAIN_BINDINGS)
  return model_dir, json.loads((model_dir / "metrics.json").read_text()), result


@pytest.mark.slow  # the gate's training run: about a minute of one CPU thread
def test_segmenter_learns_the_shapes(segmenter_run):
  _, metrics, _ = segmenter_run
  print("mIoU", metrics["mIoU"], "pixel accuracy", metrics["pixel_accuracy"], "per class",
        metrics["per_class_iou"])
  assert metrics["mIoU"] >= MIOU_FLOOR, (
      f"mIoU {metrics['mIoU']:.4f} < floor {MIOU_FLOOR} (all-background ~0.16): training "
      "did not learn")


@pytest.mark.slow
def test_segmenter_writes_miou_per_class_iou_and_png(segmenter_run):
  model_dir, metrics, result = segmenter_run
  assert metrics["step"] == STEPS and metrics["weights"] == "EMA"
  assert len(metrics["per_class_iou"]) == 5 and metrics["metrics"]["num_images"] == NUM_VAL
  present = [v for v in metrics["per_class_iou"] if v is not None]
  assert len(present) == 5  # 32 val images hold every shape
  assert metrics["mIoU"] == pytest.approx(sum(present) / len(present))
  assert metrics["pixel_accuracy"] >= PIXEL_ACCURACY_FLOOR, metrics["pixel_accuracy"]
  assert (model_dir / "eval_segmentation.png").exists()
  assert "mIoU" in result.stdout and f"Step {STEPS} (EMA weights)" in result.stdout
