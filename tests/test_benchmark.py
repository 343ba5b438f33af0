"""The benchmark's JSON contract and its FLOP count."""
import json
import os
import subprocess
import sys
import types

import gin
import pytest

from detlab import benchmark, config

REQUIRED_KEYS = {"params", "gmacs", "infer_img_s_bs1", "infer_img_s_bs8", "e2e_img_s_bs1",
                 "postprocess_ms", "train_img_s_bs8", "matmul_gflops"}


def _benchmark_json(gin_file: str, only: str) -> dict:
  """`python -m detlab.benchmark --json` of `gin_file` at 128² measuring `only`."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "detlab.benchmark", f"--gin_file={gin_file}",
       "--gin_bindings=IMAGE_SIZE = 128", "--json", f"--only={only}"],
      capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_only_params_and_gmacs_is_a_quick_count_as_json():
  out = _benchmark_json("efficientdet_d0.gin", "params,gmacs")
  assert out["params"] == 3_927_203
  # Multiply-adds scale with pixels: at 128² D0 is ~1/16 of its 2.549 G at 512².
  assert 2.549 / 16 * 0.9 < out["gmacs"] < 2.549 / 16 * 1.1
  assert set(out) == {"model", "image_size", "precision", "params", "gmacs"}  # no timing run


def test_instance_gin_counts_the_mask_branch_at_100_boxes():
  """instance_segmentation_d0.gin: D0's parameters plus the mask head's, and the branch's
  multiply-adds at 100 boxes as its layers give them: per box 4 separable 3x3 convs of 64 on
  14 x 14 (14^2 * 64 * (9 + 64) each) and the 1x1 predictor on 14 x 14 (14^2 * 64; the
  recipe's mask_upsample = 'bilinear' resizes its logits to 28 x 28, no transposed conv);
  BN, swish and RoIAlign's interpolation add ~3 %."""
  out = _benchmark_json("instance_segmentation_d0.gin", "params,mask_gmacs")
  convs = 100 * (4 * 14 ** 2 * 64 * (9 + 64) + 14 ** 2 * 64) / 1e9
  assert convs <= out["mask_gmacs"] <= convs * 1.05, (out, convs)
  mask_head = (64 * (9 + 64) + 4 * 64) * 4 + 64 + 1
  assert out["params"] == 3_927_203 + mask_head


def test_full_measurement_reports_every_required_key():
  # The key contract does not depend on the model: the tests' tiny backbone and a one-cell
  # BiFPN (D0's build and five traced measurements took ~55 s of the suite).
  import tiny_backbone  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin.clear_config()
  config.parse_gin(["efficientdet_d0.gin"], [
      "IMAGE_SIZE = 128", "efficientdet.backbone_fn = @tiny_test_backbone",
      "efficientdet.fpn_width = 16", "efficientdet.fpn_cells = 1",
      "efficientdet.head_repeats = 1"])
  try:
    out = benchmark.measure(set(benchmark.ALL), min_seconds=0.05, train_batch=8, profile=True)
  finally:
    gin.clear_config()
  assert REQUIRED_KEYS <= set(out)
  # --profile: op-level kernel time of inference at batch 8 and 1 and of the training step
  profiles = out.pop("op_profiles")
  assert [t.split(",")[0] for t in profiles] == ["network inference"] * 2 + ["training step"]
  for rows in profiles.values():
    assert any("Conv2D" in row.name for row in rows[:10])
    assert sum(row.share for row in rows) == pytest.approx(1.0)
  assert all(out[k] > 0 for k in REQUIRED_KEYS)
  # The achieved fraction of the measured fp32 matmul peak is derived from the same run.
  assert out["fraction_of_matmul_peak_bs8"] == pytest.approx(
      2 * out["gmacs"] * out["infer_img_s_bs8"] / out["matmul_gflops"])
  # Timings name the machine they came from (cores as this process sees them).
  assert f"{len(os.sched_getaffinity(0))} cores" in out["machine"]
  assert "TF_ENABLE_ONEDNN_OPTS=" in out["machine"]


def test_mask_profile_names_the_branchs_layers_and_the_ratio_is_of_one_run():
  """--profile on a mask model adds the mask branch's kernel time by node (where
  mask_over_network_bs1's time goes), and that ratio is mask_ms_bs1 over the same run's
  batch-1 network time."""
  import tiny_backbone  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  gin.clear_config()
  config.parse_gin(["instance_segmentation_d0.gin"], [
      "IMAGE_SIZE = 128", "efficientdet.backbone_fn = @tiny_test_backbone",
      "efficientdet.fpn_width = 16", "efficientdet.fpn_cells = 1",
      "efficientdet.head_repeats = 1", "InstanceSegmentationTask.mask_repeats = 2"])
  try:
    out = benchmark.measure({"infer_img_s_bs1", "mask_ms_bs1"}, min_seconds=0.05, profile=True)
  finally:
    gin.clear_config()
  assert out["mask_over_network_bs1"] == pytest.approx(
      out["mask_ms_bs1"] * out["infer_img_s_bs1"] / 1000.0)
  profiles = out.pop("op_profiles")
  title = next(t for t in profiles if t.startswith("mask branch"))
  names = " ".join(row.name for row in profiles[title])
  for layer in ("roi_align", "conv0", "conv1", "predictor", "ResizeBilinear"):
    assert layer in names, (layer, names)
  assert "upsample/" not in names  # the recipe's bilinear form has no transposed conv


def test_profile_ops_sums_kernel_time_by_op_type_and_by_node():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from detlab.benchmark.profile import format_profile, profile_ops
  x = tf.random.stateless_normal([2, 32, 32, 8], seed=[1, 2])
  kernel = tf.random.stateless_normal([3, 3, 8, 8], seed=[3, 4])
  fn = tf.function(lambda t: tf.nn.relu(tf.nn.conv2d(tf.sigmoid(t), kernel, 1, "SAME")))
  rows = profile_ops(lambda: fn(x).numpy(), calls=2)
  names = [row.name for row in rows]
  assert any("Conv2D" in name for name in names) and "Sigmoid" in names
  assert all(row.ms >= 0 and row.count >= 1 for row in rows)
  assert [row.ms for row in rows] == sorted((row.ms for row in rows), reverse=True)
  by_node = profile_ops(lambda: fn(x).numpy(), calls=1, by="node")
  assert any(name.endswith("(Sigmoid)") for name in (row.name for row in by_node))
  table = format_profile("title", rows, top=2)
  assert table.splitlines()[0] == "title" and len(table.splitlines()) == 5


def test_backbone_mode_measures_the_classifier_at_its_native_size():
  assert benchmark.native_classifier_size("efficientnet_b3") == 300
  assert benchmark.native_classifier_size("efficientnetv2_s") == 384
  # The Inception papers' geometry: GoogLeNet and BN-Inception 224, the later ones 299.
  assert [benchmark.native_classifier_size(n) for n in (
      "inception_v1", "inception_v2", "inception_v3", "inception_v4", "inception_resnet_v1",
      "inception_resnet_v2", "xception")] == [224, 224, 299, 299, 299, 299, 299]
  out = benchmark.measure_backbone("efficientnet_b0", {"params", "gmacs"}, 0.05, image_size=224)
  assert out["params"] == 5_330_564  # keras apps' B0 classifier, less its Normalization layer
  assert out["gmacs"] == pytest.approx(0.39, rel=0.03)  # paper: 0.39B FLOPs (multiply-adds)


def test_input_pipeline_mode_times_the_configured_training_input(shapes_dir):
  gin.clear_config()
  config.parse_gin(["efficientdet_d0.gin"], [
      "IMAGE_SIZE = 128", f"TRAIN_FILE_PATTERN = '{shapes_dir}/train-*.tfrecord'"])
  try:
    out = benchmark.measure({benchmark.INPUT}, min_seconds=0.2, train_batch=2)
  finally:
    gin.clear_config()
  assert out[benchmark.INPUT] > 0
  # nothing else timed; the machine it was timed on is named
  assert set(out) == {"model", "image_size", "precision", "machine", benchmark.INPUT}


# Task gin files (train.task = @SegmentationTask() / @ClassificationTask()).

def _task_measurement(gin_file, bindings, wanted, **kwargs):
  """measure_task of the gin file's train.task, and a second model built by a second task
  instance from the same config, as training builds it."""
  from detlab.training.experiment import configured_task
  gin.clear_config()
  config.parse_gin([gin_file], bindings)
  try:
    out = benchmark.measure_task(configured_task(), wanted, min_seconds=0.01, **kwargs)
    return out, configured_task().build_model()
  finally:
    gin.clear_config()


@pytest.mark.slow  # ~26 s on 2 cores: a subprocess, seg-D0 and seg-D4 built
def test_segmentation_gin_reports_the_task_built_segmenter_counts():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "detlab.benchmark", "--gin_file=segmentation_d0.gin",
       "--gin_bindings=IMAGE_SIZE = 128", "--json", "--only=params,gmacs"],
      capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["task"] == "segmentation" and out["image_size"] == 128
  assert out["params"] == 4_437_355  # seg-D0: B0 + BiFPN 128 x 3 (P2-P7) + head 256 x 3, K=21
  # The head and BiFPN scale with pixels: at 128² ~1/16 of the 6.357 G measured at 512².
  assert out["gmacs"] == pytest.approx(6.357 / 16, rel=0.01)
  d4, model = _task_measurement("segmentation_d4.gin", ["IMAGE_SIZE = 128"], {"params"})
  assert d4["params"] == model.count_params() == 17_732_903  # seg-D4 (B4 backbone)


def test_task_benchmark_times_the_trainer_train_builds_and_refuses_foreign_measurements():
  import tiny_backbone  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  out, model = _task_measurement(
      "segmentation_d0.gin", ["IMAGE_SIZE = 64", "NUM_CLASSES = 3",
                              "segmenter.backbone_fn = @tiny_test_backbone",
                              "segmenter.fpn_width = 8", "segmenter.fpn_cells = 1",
                              "segmenter.head_width = 8", "segmenter.head_repeats = 1"],
      {"params", "gmacs", "train_img_s"}, train_batch=2)
  assert out["params"] == model.count_params()
  assert out["gmacs"] == pytest.approx(benchmark.count_gmacs(model, 64), rel=1e-9)
  assert out["train_img_s_bs2"] > 0
  # segmentation_d0.gin binds no optimizer or EMA: train()'s defaults, as training uses them.
  assert out["train_step"] == ("detlab Trainer: sgd momentum=0.9, weight decay 4e-05, "
                               "clip 10, EMA 0.9998")
  with pytest.raises(ValueError, match="keras_fit_img_s"):
    benchmark.measure_task(types.SimpleNamespace(name="segmentation"), {"keras_fit_img_s"},
                           0.01)


@pytest.mark.slow  # ~33 s on 2 cores: B0 built and trained twice (detlab, keras)
def test_classification_gin_times_detlab_trainer_beside_keras_fit():
  from detlab.benchmark.tasks import measurement_name
  assert [measurement_name(n) for n in ("train_img_s_bs32", "keras_fit_img_s_bs8", "gmacs")] \
      == ["train_img_s", "keras_fit_img_s", "gmacs"]  # --only takes the output keys too
  out, _ = _task_measurement("classification_efficientnet_b0.gin", ["IMAGE_SIZE = 32"],
                             {"params", "train_img_s", "keras_fit_img_s"}, train_batch=2)
  assert out["params"] == 5_330_564  # keras apps' B0 classifier, less its Normalization layer
  rmsprop = "rmsprop rho=0.9 momentum=0.9 epsilon=0.001"  # the gin's recipe, on both sides
  assert out["train_step"] == (f"detlab Trainer: {rmsprop}, weight decay 1e-05, no clipping, "
                               "EMA 0.9999")
  assert out["keras_fit_step"] == (f"tf_keras.applications.EfficientNetB0 model.fit: {rmsprop}, "
                                   "no weight decay, no EMA")
  assert out["train_img_s_bs2"] > 0 and out["keras_fit_img_s_bs2"] > 0
  assert out["detlab_over_keras_fit"] == pytest.approx(
      out["train_img_s_bs2"] / out["keras_fit_img_s_bs2"])
