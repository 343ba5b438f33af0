"""OpenVINO FP32 of an instance-segmentation model: model.xml + mask.xml (the mask branch run
after the TF NMS) serve the SavedModel's detection_masks; its runner pastes them in each
image's pixels as the SavedModel's runner does, and detlab.infer writes them as RLE."""
import json

import numpy as np
from pycocotools import mask as mask_util
from PIL import Image
import pytest
import tensorflow as tf

from detlab import infer
from detlab.export import exporter, runners
# The tiny instance-segmentation model_dir of the serving tests (its own seeds).
from test_instance_serving import mask_model_dir  # noqa: F401  pylint: disable=import-error,unused-import

openvino = pytest.importorskip("detlab.export.openvino")
pytest.importorskip("openvino", reason="OpenVINO export needs pip install 'detlab[openvino]'")


@pytest.fixture(scope="module")
def ov_mask_export(mask_model_dir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  out = tmp_path_factory.mktemp("ov_mask_export") / "out"
  exporter.export(str(mask_model_dir), str(out), ["saved_model", "openvino_fp32"])
  return out


def test_openvino_fp32_serves_the_saved_models_masks(ov_mask_export):
  """The same S x S uint8 images into both (the SavedModel's resize is then the identity):
  the same detections and detection_masks rows, 0 past num_detections."""
  assert (ov_mask_export / "openvino_fp32" / "mask.xml").exists()
  images = np.random.RandomState(5).randint(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  serve = tf.saved_model.load(str(ov_mask_export / "saved_model")).signatures[
      "serving_default"]
  want = {k: v.numpy() for k, v in serve(input_tensor=tf.constant(images)).items()}
  got = openvino.OpenVinoDetector(str(ov_mask_export / "openvino_fp32"))(images)
  assert got["detection_masks"].shape == want["detection_masks"].shape
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  for i in range(2):
    n = int(want["num_detections"][i])
    assert n > 0
    same = np.all(np.abs(got["detection_boxes"][i, :n] - want["detection_boxes"][i, :n])
                  < 1e-3, -1)
    assert same.mean() > 0.9
    difference = np.abs(got["detection_masks"][i, :n][same] -
                        want["detection_masks"][i, :n][same])
    assert difference.max() < 1e-4, difference.max()
    assert not got["detection_masks"][i, n:].any()
  assert got["detection_masks"][0, 0].std() > 0.01  # masks that vary over the box


def test_runner_and_infer_paste_openvino_masks(ov_mask_export, tmp_path):
  """A letterboxed 48 x 80 image: the OpenVINO runner's masks are the SavedModel runner's
  (up to pixels of rows whose boxes the uint8 letterbox moves); infer's RLE rows decode to
  them."""
  picture = np.random.RandomState(4).randint(0, 256, (48, 80, 3), dtype=np.uint8)
  xml = str(ov_mask_export / "openvino_fp32" / "model.xml")
  runner = runners.load_runner(xml)
  ov = runner([picture])
  saved = runners.load_runner(str(ov_mask_export / "saved_model"))([picture])
  assert ov["masks"][0].shape == saved["masks"][0].shape == (100, 48, 80)
  n = saved["num_detections"][0]
  same = np.all(np.abs(ov["boxes"][0, :n] - saved["boxes"][0, :n]) < 0.5, -1)
  assert same.mean() > 0.5
  assert (ov["masks"][0][:n][same] != saved["masks"][0][:n][same]).mean() < 0.01
  assert ov["masks"][0][:n].any() and not ov["masks"][0][n:].any()
  Image.fromarray(picture).save(tmp_path / "1.png")
  infer.run_inference(xml, str(tmp_path / "1.png"), str(tmp_path / "out"),
                      score_threshold=0.5, runner=runner)
  rows = json.loads((tmp_path / "out" / "detections.json").read_text())
  keep = np.flatnonzero(ov["scores"][0] >= 0.5)
  assert len(rows) == len(keep) > 0
  decoded = np.stack([mask_util.decode(r["segmentation"]) for r in rows])
  np.testing.assert_array_equal(decoded, ov["masks"][0][keep])
