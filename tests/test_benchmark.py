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
  assert set(out) == {"model", "image_size", "params", "gmacs"}  # no timing was run


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
