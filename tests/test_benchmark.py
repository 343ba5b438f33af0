"""The benchmark's JSON contract and its FLOP count."""
import json
import os
import subprocess
import sys

import gin
import pytest

from detlab import benchmark, config

REQUIRED_KEYS = {"params", "gmacs", "infer_img_s_bs1", "infer_img_s_bs8", "e2e_img_s_bs1",
                 "postprocess_ms", "train_img_s_bs8", "matmul_gflops"}


def test_only_params_and_gmacs_is_a_quick_count_as_json():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "detlab.benchmark", "--gin_file=efficientdet_d0.gin",
       "--gin_bindings=IMAGE_SIZE = 128", "--json", "--only=params,gmacs"],
      capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["params"] == 3_927_203
  # Multiply-adds scale with pixels: at 128² D0 is ~1/16 of its 2.549 G at 512².
  assert 2.549 / 16 * 0.9 < out["gmacs"] < 2.549 / 16 * 1.1
  assert set(out) == {"model", "image_size", "precision", "params", "gmacs"}  # no timing run


def test_full_measurement_reports_every_required_key():
  gin.clear_config()
  config.parse_gin(["efficientdet_d0.gin"], ["IMAGE_SIZE = 128"])
  try:
    out = benchmark.measure(set(benchmark.ALL), min_seconds=0.05, train_batch=8)
  finally:
    gin.clear_config()
  assert REQUIRED_KEYS <= set(out)
  assert all(out[k] > 0 for k in REQUIRED_KEYS)
  # The achieved fraction of the measured fp32 matmul peak is derived from the same run.
  assert out["fraction_of_matmul_peak_bs8"] == pytest.approx(
      2 * out["gmacs"] * out["infer_img_s_bs8"] / out["matmul_gflops"])
  # Timings name the machine they came from (cores as this process sees them).
  assert f"{len(os.sched_getaffinity(0))} cores" in out["machine"]
  assert "TF_ENABLE_ONEDNN_OPTS=" in out["machine"]


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
