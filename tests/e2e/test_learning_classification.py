"""Classification learning gate: a real `python -m detlab.train` run of
classification_efficientnet_b0_demo.gin on the built-in classification set must learn the
10 shape classes (top-1 floor), and the model_dir it writes is the one the rest of this file
reads (metrics.json, best/, the PNG, a detector's backbone initialised from it).

The run: tests/e2e/learning_backbone.py's small ReLU conv net in place of EfficientNet-B0
(B0 from scratch stays at chance for the first few hundred steps here: its reference head
init starts 10-class logits at std ~5), 32 px images, 600 Adam steps of batch 16 (lr 0.016
per 64 images, warm-up 0.05 epochs) on 1000 train images, evaluated (EMA weights) on 200 val
images. Chance top-1 is 0.1 (the classes are balanced: label = index mod 10).

Top-1 at step 600, measured with
  TF_NUM_INTRAOP_THREADS=1 python -m detlab.train <the bindings below> train.seed=T
on the data set written by make_dataset(seed=D, num_train=1000, num_val=200, image_size=32):
  D=0, T=1: 0.430    D=1, T=2: 0.350    D=2, T=3: 0.420
The floor is the worst of them minus a margin of 0.10: 0.25, 2.5x chance. A broken build
stays far below it: training labels shifted by one class in the classification parser
(label + 1 mod 10) gives top-1 0.115 (D=0, T=1).
"""
import json

import numpy as np
import pytest
import tensorflow as tf

import e2e_cli  # pylint: disable=import-error  (tests/e2e/e2e_cli.py)

DATA_SEED, TRAIN_SEED = 0, 1
NUM_TRAIN, NUM_VAL, IMAGE_SIZE, STEPS = 1000, 200, 32, 600
TOP1_FLOOR = 0.25  # the module doc's worst seed (0.35) minus a margin of 0.10
TRAIN_BINDINGS = [
    "import tests.e2e.learning_backbone", "classifier.backbone_fn = @small_test_convnet",
    f"IMAGE_SIZE = {IMAGE_SIZE}", "Schedule.batch_size = 16", f"Schedule.train_steps = {STEPS}",
    f"Schedule.num_train_images = {NUM_TRAIN}", "Schedule.steps_per_loop = 25",
    "Schedule.log_every_steps = 25", "Schedule.checkpoint_every_steps = 300",
    "OptimizerConfig.learning_rate_per_64 = 0.016", "OptimizerConfig.warmup_epochs = 0.05",
    f"train.seed = {TRAIN_SEED}"]


@pytest.fixture(scope="module")
def classification_dir(tmp_path_factory):
  from data_tools.make_classification_dataset import make_dataset
  out = str(tmp_path_factory.mktemp("shapes_cls"))
  make_dataset(out, num_train=NUM_TRAIN, num_val=NUM_VAL, num_shards=1, seed=DATA_SEED,
               image_size=IMAGE_SIZE)
  return out


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, classification_dir):
  """(model_dir, the CompletedProcess) of the gate's training run."""
  model_dir = tmp_path_factory.mktemp("cls_run")
  d = classification_dir
  bindings = [f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'",
              f"ClassificationTask.label_map_file='{d}/label_map.json'"] + TRAIN_BINDINGS
  result = e2e_cli.train("classification_efficientnet_b0_demo.gin", model_dir, bindings)
  return model_dir, result


@pytest.mark.slow  # the gate's training run: about a minute of one CPU thread
def test_classifier_learns_the_shape_classes(classifier_run):
  model_dir, _ = classifier_run
  metrics = json.loads((model_dir / "metrics.json").read_text())
  print("top-1", metrics["top1"], "top-5", metrics["top5"], "per class",
        metrics["per_class_accuracy"])
  assert metrics["top1"] >= TOP1_FLOOR, (
      f"top-1 {metrics['top1']:.4f} < floor {TOP1_FLOOR} (chance 0.1): training did not learn")


@pytest.mark.slow
def test_classifier_writes_its_metrics_best_checkpoint_and_png(classifier_run):
  model_dir, result = classifier_run
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == STEPS and metrics["weights"] == "EMA"
  assert metrics["top1"] <= metrics["top5"]
  assert metrics["metrics"]["top1"] == metrics["top1"]
  per_class = metrics["per_class_accuracy"]
  assert len(per_class) == 10
  # Balanced val set (20 per class): top-1 is the mean of the per-class accuracies.
  assert metrics["top1"] == pytest.approx(np.mean(per_class), abs=1e-6)
  assert metrics["metrics"]["num_examples"] == NUM_VAL
  assert (model_dir / "eval_classification.png").exists()
  assert "top-1" in result.stdout and f"Step {STEPS} (EMA weights)" in result.stdout
  best = json.loads((model_dir / "best" / "metrics.json").read_text())
  assert best["top1"] == metrics["top1"] and best["step"] == STEPS


@pytest.mark.slow
def test_detector_backbone_starts_from_the_classifier(classifier_run):
  """init_mode='backbone' on a classifier model_dir: the detector's backbone equals the
  classifier's (the classifier's EMA weights where the checkpoint has them)."""
  from detlab.models.classifier import classifier
  from detlab.models.efficientdet import efficientdet
  from detlab.training.ema import WeightAverage, averaged_variables
  from detlab.training.initialize import initialize_from_checkpoint
  model_dir, _ = classifier_run
  import gin  # pylint: disable=import-outside-toplevel
  # Its import registers the net with gin: a test run earlier in this worker may have left the
  # config locked (train() locks it), which refuses new configurables.
  with gin.unlock_config():
    from tests.e2e import learning_backbone  # pylint: disable=import-outside-toplevel
  with learning_backbone.registered():
    source = classifier(learning_backbone.NAME, num_classes=10, image_size=IMAGE_SIZE,
                        dropout_rate=0.1)
    average = WeightAverage(source)
    tf.train.Checkpoint(model=source, ema=average.shadows).read(
        tf.train.latest_checkpoint(str(model_dir))).expect_partial()
    shadow_of = {v.ref(): s.numpy() for v, s in zip(averaged_variables(source), average.shadows)}
    detector = efficientdet(learning_backbone.small_test_convnet, num_classes=4, image_size=128,
                            fpn_width=16, fpn_cells=1, head_repeats=1)
    table = initialize_from_checkpoint(detector, str(model_dir), "backbone")
  assert table["backbone"]["loaded"] == len(detector.backbone.variables)
  assert len(source.backbone.variables) == len(detector.backbone.variables)
  differs = 0
  for mine, theirs in zip(detector.backbone.variables, source.backbone.variables):
    expected = shadow_of.get(theirs.ref(), theirs.numpy())
    np.testing.assert_array_equal(mine.numpy(), expected, err_msg=mine.name)
    differs += not np.array_equal(expected, theirs.numpy())
  assert differs > 0  # training moved the raw weights away from their average


def test_inception_v2_demo_builds_bn_inception_on_the_built_in_data(classification_dir):
  """classification_inception_v2_demo.gin: BN-Inception (BN after every conv, so it trains
  from scratch) at the demo's 64 px, reading the demo's records."""
  import gin
  from detlab import config
  gin.clear_config()
  try:
    d = classification_dir
    config.parse_gin(["classification_inception_v2_demo.gin"],
                     [f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'"])
    task = gin.query_parameter("train.task").scoped_configurable_fn()
    model = task.build_model()
    assert model.backbone.name.startswith("inception_v2")
    bn = [l for l in model.backbone.layers if "BatchNormalization" in type(l).__name__]
    assert len(bn) > 50  # one per conv
    batch = next(iter(task.train_dataset(model, None, 2, seed=0)))
    assert batch["images"].shape == (2, 64, 64, 3)
    assert model(batch["images"]).shape == (2, 10)
    losses = task.compute_loss(model, batch, training=True)
    assert np.isfinite(float(losses["total"])) and float(losses["aux"]) == 0.0
  finally:
    gin.clear_config()
