r"""Writes tests/oracles/automl_lite0_oracle.{json,npz}: what google/automl's own
EfficientDet-Lite0 computes with the deterministic weights of automl_lite_rule.py.

Not run by the test suite (it needs google/automl's source); the suite's
tests/data_tools/test_convert_automl_lite_checkpoint.py rebuilds the same checkpoint from the
stored names and shapes, converts it with detlab's converter and compares detlab's Lite0.

Needs google/automl's efficientdet/ folder as plain files in AUTOML_DIR, e.g. from a git copy
of google/automl (a bare or mirror git directory G):
  for f in $(git --git-dir=$G ls-tree -r --name-only HEAD efficientdet | grep '\.py$'); do
    mkdir -p automl_src/$(dirname $f); git --git-dir=$G show HEAD:$f > automl_src/$f; done
  AUTOML_DIR=$PWD/automl_src/efficientdet python tests/oracles/make_automl_lite_oracle.py
with detlab's environment (tensorflow, tf_keras: automl's code runs unpatched as tf.keras
through TF_USE_LEGACY_KERAS=1, set below). Written with automl at commit
6a54c8741e7c3265d4547c4f35f47a0391122dc5 (2025-03-01) under TensorFlow 2.20.

What it does: builds automl's Keras EfficientDetNet('efficientdet-lite0') at 320 (90
classes), takes every weight's name and shape, writes a TF1 name-based bundle whose values
(and ExponentialMovingAverage shadows) come from automl_lite_rule.value, loads it with automl's
own util_keras.restore_ckpt (EMA shadows, then the raw weights, strict: a missing name is an
error), normalises the rule's uint8 image with automl's DetectionInputProcessor.normalize_image
and the config's mean_rgb / stddev_rgb, and stores for each level's class and box output a
fixed subsample of values plus the level's sum and sum of absolute values.
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ["AUTOML_DIR"])
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import automl_lite_rule as rule  # noqa: E402
import dataloader  # noqa: E402  (automl)
import hparams_config  # noqa: E402  (automl)
from tf2 import efficientdet_keras, util_keras  # noqa: E402  (automl)

MODEL = "efficientdet-lite0"


def outputs_of(model, images) -> dict:
  class_outputs, box_outputs = model(images, training=False)
  out = {}
  for head, per_level in (("class", class_outputs), ("box", box_outputs)):
    for level, tensor in zip(range(3, 8), per_level):
      values = tensor.numpy().astype(np.float64)
      flat = values.reshape(-1)
      out[f"{head}_{level}_shape"] = np.array(values.shape)
      out[f"{head}_{level}_samples"] = flat[rule.sample_indices(flat.size, level, head)]
      out[f"{head}_{level}_sum"] = flat.sum()
      out[f"{head}_{level}_abs_sum"] = np.abs(flat).sum()
  return out


def main() -> None:
  config = hparams_config.get_efficientdet_config(MODEL)
  assert config.image_size == rule.IMAGE_SIZE and config.num_classes == 90
  model = efficientdet_keras.EfficientDetNet(config=config)
  model.build((1, rule.IMAGE_SIZE, rule.IMAGE_SIZE, 3))
  names_and_shapes = [(w.name[:-len(":0")], [int(d) for d in w.shape]) for w in model.weights]
  tensors = rule.bundle_tensors(names_and_shapes)
  processor = dataloader.DetectionInputProcessor(tf.constant(rule.image()[0]),
                                                 rule.IMAGE_SIZE)
  images = processor.normalize_image(config.mean_rgb, config.stddev_rgb)[None]
  arrays = {}
  with tempfile.TemporaryDirectory() as tmp:
    prefix = rule.write_bundle(tensors, os.path.join(tmp, "model"))
    for kind, decay in (("ema", 0.9998), ("raw", 0.0)):
      util_keras.restore_ckpt(model, prefix, ema_decay=decay, skip_mismatch=False)
      for w in model.weights:  # automl loaded exactly the rule's values
        key = w.name[:-len(":0")] + (rule.EMA_SUFFIX if kind == "ema" else "")
        np.testing.assert_array_equal(w.numpy(), tensors[key])
      arrays.update({f"{kind}_{k}": v for k, v in outputs_of(model, images).items()})
  arrays["image_sum"] = np.array(int(rule.image().astype(np.int64).sum()))
  np.savez_compressed(os.path.join(HERE, "automl_lite0_oracle.npz"), **arrays)
  manifest = {
      "model": MODEL, "image_size": rule.IMAGE_SIZE, "num_classes": 90,
      "mean_rgb": config.mean_rgb, "stddev_rgb": config.stddev_rgb,
      "act_type": config.act_type, "fpn_weight_method": config.fpn_weight_method,
      "params": int(model.count_params()), "tensorflow": tf.__version__,
      "variables": [[name, shape] for name, shape in names_and_shapes]}
  with open(os.path.join(HERE, "automl_lite0_oracle.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=0)
    f.write("\n")
  print(f"{len(names_and_shapes)} variables, {manifest['params']:,} parameters; "
        "outputs per level (ema): " + ", ".join(
            f"class_{l} |sum| {arrays[f'ema_class_{l}_abs_sum']:.4g}" for l in range(3, 8)))


if __name__ == "__main__":
  main()
