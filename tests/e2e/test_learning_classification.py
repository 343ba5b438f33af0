"""`python -m detlab.train` trains a classifier through the shared training root (tiny built-in
classification set, a handful of steps), and a detector starts from that classifier."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def classification_dir(tmp_path_factory):
  from data_tools.make_classification_dataset import make_dataset
  out = str(tmp_path_factory.mktemp("shapes_cls"))
  make_dataset(out, num_train=16, num_val=12, num_shards=2, seed=0, image_size=32)
  return out


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, classification_dir):
  model_dir = tmp_path_factory.mktemp("cls_run")
  d = classification_dir
  bindings = [f"TRAIN_FILE_PATTERN='{d}/train-*'", f"EVAL_FILE_PATTERN='{d}/val-*'",
              "IMAGE_SIZE=32", f"ClassificationTask.label_map_file='{d}/label_map.json'",
              "Schedule.batch_size=4", "Schedule.train_steps=3", "Schedule.steps_per_loop=1",
              "Schedule.log_every_steps=1", "Schedule.checkpoint_every_steps=3",
              "Schedule.num_train_images=16"]
  args = [sys.executable, "-m", "detlab.train",
          "--gin_file=classification_efficientnet_b0_demo.gin", f"--model_dir={model_dir}"]
  args += [f"--gin_bindings={b}" for b in bindings]
  result = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


def test_classifier_trains_and_writes_its_metrics_and_png(classifier_run):
  model_dir, result = classifier_run
  metrics = json.loads((model_dir / "metrics.json").read_text())
  assert metrics["step"] == 3 and metrics["weights"] == "EMA"
  assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
  assert metrics["metrics"]["top1"] == metrics["top1"]
  assert len(metrics["per_class_accuracy"]) == 10
  assert metrics["metrics"]["num_examples"] == 12
  assert (model_dir / "eval_classification.png").exists()
  assert "top-1" in result.stdout and "Step 3 (EMA weights)" in result.stdout
  best = json.loads((model_dir / "best" / "metrics.json").read_text())
  assert best["top1"] == metrics["top1"] and best["step"] == 3


def test_detector_backbone_starts_from_the_classifier(classifier_run):
  """init_mode='backbone' on a classifier model_dir: the detector's backbone equals the
  classifier's (the classifier's EMA weights where the checkpoint has them)."""
  from detlab.backbones import BACKBONES
  from detlab.models.classifier import classifier
  from detlab.models.efficientdet import efficientdet
  from detlab.training.ema import WeightAverage, averaged_variables
  from detlab.training.initialize import initialize_from_checkpoint
  model_dir, _ = classifier_run
  source = classifier("efficientnet_b0", num_classes=10, image_size=32, dropout_rate=0.1)
  average = WeightAverage(source)
  tf.train.Checkpoint(model=source, ema=average.shadows).read(
      tf.train.latest_checkpoint(str(model_dir))).expect_partial()
  shadow_of = {v.ref(): s.numpy() for v, s in zip(averaged_variables(source), average.shadows)}
  detector = efficientdet(BACKBONES["efficientnet_b0"], num_classes=4, image_size=128,
                          fpn_width=16, fpn_cells=1, head_repeats=1)
  table = initialize_from_checkpoint(detector, str(model_dir), "backbone")
  assert table["backbone"]["loaded"] == len(detector.backbone.variables)
  assert len(source.backbone.variables) == len(detector.backbone.variables)
  differs = 0
  for mine, theirs in zip(detector.backbone.variables, source.backbone.variables):
    expected = shadow_of.get(theirs.ref(), theirs.numpy())
    np.testing.assert_array_equal(mine.numpy(), expected, err_msg=mine.name)
    differs += not np.array_equal(expected, theirs.numpy())
  assert differs > 0  # 3 steps moved the raw weights away from their average



def test_inception_v2_demo_builds_bn_inception_on_the_built_in_data(classification_dir):
  """classification_inception_v2_demo.gin: BN-Inception (BN after every conv, so it trains
  from scratch) at the data's own 64 px, reading the demo's records."""
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
