"""The oracle: a google/automl EfficientDet-D0 checkpoint (the reference's TF1 name-based
format, seeded random weights, calibrated BN statistics, EMA shadows that differ from the raw
weights) and the reference network's per-level outputs for one fixed ImageNet-normalised
256 x 256 input. detlab's D0 with the converted weights must give the same class and box
outputs at every level, for the EMA and the raw weights: max abs diff <= 1e-4 called eagerly,
and <= 1e-5 traced, where the CPU inference forms (BN folded into convs, the grouped
depthwise conv, the SE gate folded into the projection) replace the stock ops."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from detlab import api
from reference_fixture import automl_d0_dir

TOLERANCE = 1e-4
TRACED_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
  path = automl_d0_dir()
  with open(os.path.join(path, "manifest.json")) as f:
    manifest = json.load(f)
  return path, manifest, np.load(os.path.join(path, "reference_outputs.npz"))


def max_differences(model, outputs, kind: str, traced: bool = False) -> dict:
  call = lambda x: model(x, training=False)  # pylint: disable=unnecessary-lambda-assignment
  class_outputs, box_outputs = (tf.function(call) if traced else call)(
      tf.constant(outputs["images"]))
  diffs = {}
  for level in range(3, 8):
    diffs[f"class_{level}"] = float(np.abs(class_outputs[str(level)].numpy() -
                                           outputs[f"{kind}_class_{level}"]).max())
    diffs[f"box_{level}"] = float(np.abs(box_outputs[str(level)].numpy() -
                                         outputs[f"{kind}_box_{level}"]).max())
  return diffs


@pytest.mark.parametrize("kind", ["ema", "raw"])
def test_detlab_d0_computes_what_the_reference_computes(reference, kind):
  path, manifest, outputs = reference
  assert (manifest["image_size"], manifest["num_classes"]) == (256, 90)
  model = api.load_detector(["efficientdet_d0.gin"], ["IMAGE_SIZE = 256"], checkpoint=path,
                            use_ema=kind == "ema")
  assert model.count_params() == manifest["params"]
  diffs = max_differences(model, outputs, kind)
  print(f"{kind} max abs diff per output:", json.dumps(diffs))
  assert max(diffs.values()) <= TOLERANCE, diffs
  traced = max_differences(model, outputs, kind, traced=True)
  print(f"{kind} traced max abs diff per output:", json.dumps(traced))
  assert max(traced.values()) <= TRACED_TOLERANCE, traced
  # The other kind's outputs differ clearly: the test can tell EMA from raw weights.
  other = max_differences(model, outputs, "raw" if kind == "ema" else "ema")
  assert max(other.values()) > 100 * TOLERANCE, other
