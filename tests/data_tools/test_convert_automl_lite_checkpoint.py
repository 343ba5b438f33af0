"""convert_automl_checkpoint on an EfficientDet-Lite0 bundle: detlab's Lite0 with the
converted weights computes what google/automl's own Lite0 computes.

The oracle (tests/oracles/automl_lite0_oracle.*, written by make_automl_lite_oracle.py from
automl's code) holds automl's Lite0 variable names and shapes and, for one fixed uint8 image
normalised by automl's mean_rgb / stddev_rgb, a fixed subsample of every level's class and box
outputs plus each level's sum, for the EMA shadows and for the raw weights. Every weight is a
seeded function of its name (automl_lite_rule.py), so the bundle is rebuilt here from the
names and shapes; detlab normalises the same image by its Lite input convention."""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_tools.convert_automl_checkpoint import convert
from detlab import api
from detlab.backbones import input_convention
from detlab.weights.automl_checkpoint import (describe_checkpoint, guess_models,
                                              load_automl_checkpoint)

ORACLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "oracles")
sys.path.insert(0, ORACLE_DIR)
import automl_lite_rule as rule  # noqa: E402  pylint: disable=wrong-import-position

GIN = ["efficientdet_lite0.gin"]
TOLERANCE = 1e-4  # max abs difference of any stored output value (as the D0 oracle)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
  """(manifest, stored outputs, automl-format bundle directory rebuilt by the rule)."""
  with open(os.path.join(ORACLE_DIR, "automl_lite0_oracle.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  arrays = dict(np.load(os.path.join(ORACLE_DIR, "automl_lite0_oracle.npz")))
  bundle = tmp_path_factory.mktemp("automl_lite0")
  rule.write_bundle(rule.bundle_tensors(manifest["variables"]), str(bundle / "model"))
  return manifest, arrays, str(bundle)


def differences(model, arrays, kind: str) -> dict:
  """{output: (max abs diff of the samples, |sum diff| / sum of |values|)} per level/head."""
  image = rule.image()
  assert int(image.astype(np.int64).sum()) == int(arrays["image_sum"])
  images = input_convention(model).normalize(tf.constant(image))
  class_outputs, box_outputs = model(images, training=False)
  out = {}
  for head, outputs in (("class", class_outputs), ("box", box_outputs)):
    for level in range(3, 8):
      key = f"{kind}_{head}_{level}"
      values = outputs[str(level)].numpy().astype(np.float64)
      assert list(values.shape) == arrays[f"{key}_shape"].tolist(), key
      flat = values.reshape(-1)
      samples = flat[rule.sample_indices(flat.size, level, head)]
      out[f"{head}_{level}"] = (
          float(np.abs(samples - arrays[f"{key}_samples"]).max()),
          float(abs(flat.sum() - arrays[f"{key}_sum"]) / arrays[f"{key}_abs_sum"]))
  return out


def _worst(diffs: dict) -> tuple[float, float]:
  return max(d[0] for d in diffs.values()), max(d[1] for d in diffs.values())


def test_the_oracle_is_recognised_as_lite0(oracle):
  manifest, _, _ = oracle
  arch = describe_checkpoint({name: shape for name, shape in manifest["variables"]})
  assert guess_models(arch) == ["lite0"] and arch.activation == "relu6"
  assert (manifest["act_type"], manifest["fpn_weight_method"]) == ("relu6", "sum")


def test_converted_lite0_computes_what_automl_computes(oracle, tmp_path):
  manifest, arrays, bundle = oracle
  summary = convert(bundle, GIN, [], str(tmp_path))
  assert summary["variables"] == summary["variables_with_automl_ema"] == len(
      manifest["variables"])
  model = api.load_detector(GIN, [], checkpoint=str(tmp_path))
  assert model.count_params() == manifest["params"] == 3_290_606
  convention = input_convention(model)
  assert convention.mean == (manifest["mean_rgb"],) * 3
  assert convention.std == (manifest["stddev_rgb"],) * 3
  ema = differences(model, arrays, "ema")
  print("EMA weights, per output (max abs diff, relative sum diff):", json.dumps(ema))
  assert _worst(ema)[0] <= TOLERANCE and _worst(ema)[1] <= 1e-6, ema
  # The raw weights give other outputs: the comparison tells the two apart.
  assert _worst(differences(model, arrays, "raw"))[0] > 100 * TOLERANCE
  # The raw weights, from the automl bundle itself.
  load_automl_checkpoint(model, bundle, use_ema=False)
  raw = differences(model, arrays, "raw")
  print("raw weights:", json.dumps(raw))
  assert _worst(raw)[0] <= TOLERANCE and _worst(raw)[1] <= 1e-6, raw
