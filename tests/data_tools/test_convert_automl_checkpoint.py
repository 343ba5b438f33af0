"""convert_automl_checkpoint on the google/automl D0 oracle: the detlab model_dir it writes
gives the reference's outputs through api.load_detector (EMA and raw), evaluates with
--mode=eval, and fine-tunes to other classes via train.init_checkpoint (as does the automl
directory itself); a checkpoint of another Dk is refused naming the Dk it holds."""
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tf_keras as keras

from data_tools.convert_automl_checkpoint import convert
from detlab import api, config
from detlab.training.initialize import initialize_from_checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights"))
from reference_fixture import automl_d0_dir  # noqa: E402  pylint: disable=wrong-import-position

D0_256 = ["IMAGE_SIZE = 256"]


def _max_diff(model, outputs, kind) -> float:
  class_outputs, box_outputs = model(outputs["images"], training=False)
  return max(max(float(np.abs(class_outputs[str(l)] - outputs[f"{kind}_class_{l}"]).max()),
                 float(np.abs(box_outputs[str(l)] - outputs[f"{kind}_box_{l}"]).max()))
             for l in range(3, 8))


@pytest.fixture(scope="module")
def oracle():
  path = automl_d0_dir()
  return path, np.load(os.path.join(path, "reference_outputs.npz"))


@pytest.mark.parametrize("use_ema", [True, False])
def test_converted_model_dir_gives_the_reference_outputs(oracle, tmp_path, use_ema):
  path, outputs = oracle
  summary = convert(path, ["efficientdet_d0.gin"], D0_256, str(tmp_path), use_ema=use_ema)
  print("conversion:", json.dumps(summary))
  assert summary["variables"] == summary["variables_with_automl_ema"]
  assert json.loads((tmp_path / "conversion.json").read_text())["seconds"] > 0
  ema = api.load_detector(["efficientdet_d0.gin"], D0_256, checkpoint=str(tmp_path))
  assert _max_diff(ema, outputs, "ema") <= 1e-4  # the detlab EMA holds the automl shadows
  raw = api.load_detector(["efficientdet_d0.gin"], D0_256, checkpoint=str(tmp_path),
                          use_ema=False)
  assert _max_diff(raw, outputs, "ema" if use_ema else "raw") <= 1e-4


@pytest.mark.slow
def test_eval_and_fine_tuning_start_from_it(oracle, tmp_path, shapes_dir):
  path, _ = oracle
  out = str(tmp_path / "converted")
  convert(path, ["efficientdet_d0.gin"], D0_256, out)
  from detlab.training.experiment import train  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  config.parse_gin(["efficientdet_d0_shapes.gin"], D0_256 + [
      "NUM_CLASSES = 90", f"EVAL_FILE_PATTERN = '{shapes_dir}/val-*'",
      f"train.annotation_file = '{shapes_dir}/val_annotations.json'",
      f"train.label_map_file = '{shapes_dir}/label_map.json'", "train.num_eval_images = 8"])
  try:
    keras.backend.clear_session()
    results = train(out, "eval")
  finally:
    gin.clear_config()
  assert 0.0 <= results["metrics"]["AP"] <= 1.0
  # Fine-tuning to 4 classes, from the converted dir and from the automl bundle directly.
  for source in (out, path):
    model = api.load_detector(["efficientdet_d0.gin"], ["IMAGE_SIZE = 128", "NUM_CLASSES = 4"])
    table = initialize_from_checkpoint(model, source, "detector")
    assert table["class_net"]["skipped"] == 2  # class-predict pointwise kernel + bias
    assert table["backbone"]["new"] == table["fpn"]["new"] == table["box_net"]["new"] == 0
    assert table["backbone"]["skipped"] == table["box_net"]["skipped"] == 0


def test_a_checkpoint_of_another_dk_is_refused_naming_it(oracle, tmp_path):
  path, _ = oracle
  result = subprocess.run(
      [sys.executable, "-m", "data_tools.convert_automl_checkpoint", f"--checkpoint={path}",
       "--gin_file=efficientdet_d1.gin", "--gin_bindings=IMAGE_SIZE = 128",
       f"--model_dir={tmp_path / 'out'}"], capture_output=True, text=True, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert result.returncode == 1, result.stderr[-2000:]
  assert "looks like EfficientDet-D0" in result.stderr
  assert "--gin_file=efficientdet_d0.gin" in result.stderr
