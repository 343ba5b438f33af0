"""`python -m data_tools.import_keras_weights`: a keras .h5 -> a detlab backbone checkpoint
that `train.init_checkpoint` (init_mode='backbone') loads into a detector."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras

from detlab.backbones import efficientnet
from detlab.backbones.weight_import import weighted_layers
from detlab.models.efficientdet import efficientdet
from detlab.training.initialize import initialize_from_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # the CLI's TensorFlow start-up + two EfficientNet builds: ~1 min on 2 cores
def test_h5_to_backbone_checkpoint_to_detector(tmp_path, randomize_keras_model) -> None:
  keras_model = randomize_keras_model(keras.applications.EfficientNetB0(
      weights=None, input_shape=(64, 64, 3), classes=7), seed=8)
  h5 = str(tmp_path / "b0.h5")
  keras_model.save_weights(h5)
  out = str(tmp_path / "b0_backbone")
  result = subprocess.run(
      [sys.executable, "-m", "data_tools.import_keras_weights", f"--h5={h5}",
       "--backbone=efficientnet_b0", f"--output_dir={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "train.init_mode='backbone'" in result.stdout
  with open(os.path.join(out, "backbone.json")) as f:
    info = json.load(f)
  assert info["backbone"] == "efficientnet_b0" and info["input_convention"]["native_size"] == 224

  detector = efficientdet(efficientnet.efficientnet_b0, num_classes=3, image_size=128)
  table = initialize_from_checkpoint(detector, out, "backbone")
  assert table["backbone"]["new"] == table["backbone"]["skipped"] == 0
  keras_layers = weighted_layers(keras_model)
  layers = weighted_layers(detector.backbone)
  assert len(layers) > 100
  for name, layer in layers.items():
    for got, expected in zip(layer.get_weights(), keras_layers[name].get_weights()):
      np.testing.assert_array_equal(got, expected, err_msg=name)


def test_notop_file_is_refused_with_the_fix(tmp_path) -> None:
  from data_tools.import_keras_weights import h5_num_classes  # pylint: disable=import-outside-toplevel
  notop = keras.applications.EfficientNetB0(weights=None, include_top=False,
                                            input_shape=(32, 32, 3))
  path = str(tmp_path / "notop.h5")
  notop.save_weights(path)
  with pytest.raises(ValueError, match="classifier top"):
    h5_num_classes(path)
