"""Serving an instance-segmentation model: the SavedModel's detection_masks (loaded without
detlab) equal InstanceSegmentationTask.predict's masks; detlab.api.detect pastes them into
each image's pixels; detlab.infer writes their RLE and draws them; the LiteRT FP32 file
serves the SavedModel's masks, and so do the OpenVINO FP32 IRs (model.xml + mask.xml); the
formats without the mask branch are refused by name, the INT8 ones with their measured
reason."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import api, infer
from detlab.evaluation.coco_evaluator import paste_mask
from detlab.export import exporter, runners
from random_stats import randomize_batch_norms, randomize_biases  # pylint: disable=import-error
from tiny_export import TINY, openvino_ready  # pylint: disable=import-error

MASK_BINDINGS = TINY + ["InstanceSegmentationTask.mask_repeats = 1"]

# Runs in a fresh interpreter that must never import detlab.
LOAD_AND_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    out = serve(input_tensor=tf.constant(np.load(sys.argv[2])))
    assert not any(m == "detlab" or m.startswith("detlab.") for m in sys.modules), "detlab"
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
""")


@pytest.fixture(scope="module")
def mask_model_dir(tmp_path_factory):
  """ckpt-1 of a tiny instance-segmentation model (mask head of 1 conv) with non-trivial BN
  statistics and biases, its config.gin binding a label map."""
  directory = tmp_path_factory.mktemp("mask_model_dir")
  (directory / "label_map.json").write_text('{"1": "circle", "2": "square", "3": "triangle"}')
  keras.utils.set_random_seed(2)
  model = api.load_detector(["instance_segmentation_d0.gin"], MASK_BINDINGS + [
      f"train.label_map_file = '{directory / 'label_map.json'}'"])
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory),
                             max_to_keep=1).save(checkpoint_number=1)
  (directory / "config.gin").write_text(api.detector_config(model))
  return directory


@pytest.fixture(scope="module")
def mask_model(mask_model_dir):
  return api.load_detector([str(mask_model_dir / "config.gin")],
                           checkpoint=str(mask_model_dir))


@pytest.fixture(scope="module")
def mask_export(mask_model_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("mask_export") / "out"
  litert = importlib.util.find_spec("ai_edge_litert") is not None
  exporter.export(str(mask_model_dir), str(out), ["saved_model"] + (["tflite_fp32"] if litert
                                                                     else []) +
                  (["openvino_fp32"] if openvino_ready() else []))
  return out


def _images(seed=4):
  rng = np.random.RandomState(seed)
  return rng.randint(0, 256, (2, 48, 80, 3), dtype=np.uint8)


def _predicted(model, images) -> dict:
  """InstanceSegmentationTask.predict on detect's own preprocessing (numpy)."""
  inputs, image_info = api.preprocess(model, images)
  _, detection = api.inference_setup(model)
  task = api._inference(model).predict_task  # pylint: disable=protected-access
  assert type(task).__name__ == "InstanceSegmentationTask" and task.detection is detection
  out = task.predict(model, {"images": inputs, "image_info": image_info})
  return {k: v.numpy() for k, v in out.items()}


def test_saved_model_serves_detection_masks_without_detlab(mask_export, mask_model, tmp_path):
  images = _images()
  np.save(tmp_path / "batch.npy", images)
  run = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(mask_export / "saved_model"),
                        str(tmp_path / "batch.npy"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert run.returncode == 0, run.stderr[-3000:]
  got = dict(np.load(tmp_path / "out.npz"))
  want = _predicted(mask_model, images)
  size = mask_model.mask_size
  assert got["detection_masks"].shape == (2, 100, size, size)
  assert got["detection_masks"].dtype == np.float32
  num = want["num_detections"]
  np.testing.assert_array_equal(got["num_detections"], num)
  assert num.min() > 0
  for i in range(2):  # the rows whose box and score agree (folding may swap near ties)
    n = num[i]
    same = (np.abs(got["detection_scores"][i, :n] - want["scores"][i, :n]) < 1e-5) & \
        np.all(np.abs(got["detection_boxes"][i, :n] - want["boxes"][i, :n]) < 1e-3, -1)
    assert same.mean() > 0.9
    difference = np.abs(got["detection_masks"][i, :n][same] - want["masks"][i, :n][same])
    assert difference.max() < 1e-4, difference.max()
    assert (got["detection_masks"][i, n:] == 0).all()
  # Masks that vary over the box (not a constant the test could not tell apart): by 10x
  # the tolerance above (the recipe's bilinear 14 -> 28 logits of this random 1-conv head
  # vary by ~0.004).
  assert got["detection_masks"][0, 0].std() > 1e-3
  info = json.loads((mask_export / "export.json").read_text())
  assert info["mask_size"] == size and info["batch_norms_folded"]


def test_detect_pastes_predicted_masks_in_original_pixels(mask_model):
  images = _images()
  want = _predicted(mask_model, images)
  as_array = api.detect(mask_model, images)
  assert as_array["masks"].shape == (2, 100, 48, 80) and as_array["masks"].dtype == np.uint8
  pictures = [images[0], np.ascontiguousarray(images[1][:40, :30])]  # two sizes: a list
  as_list = api.detect(mask_model, pictures)
  assert [m.shape for m in as_list["masks"]] == [(100, 48, 80), (100, 40, 30)]
  np.testing.assert_array_equal(as_list["masks"][0], as_array["masks"][0])
  for i in range(2):
    n = as_array["num_detections"][i]
    assert n == want["num_detections"][i]
    pasted = [paste_mask(want["masks"][i, k], want["boxes"][i, k], 48, 80) for k in range(n)]
    np.testing.assert_array_equal(as_array["masks"][i, :n], np.stack(pasted))
    assert not as_array["masks"][i, n:].any()
  assert 0 < as_array["masks"][0, :5].mean() < 1  # some pixels in, some out


def test_infer_writes_rle_segmentations_and_draws_masks(mask_export, mask_model, tmp_path):
  """infer on the exported SavedModel: each row's RLE decodes to api.detect's mask (the
  unfolded model; pixels whose probability sits within folding's noise of 0.5 may flip)."""
  images = _images()
  for k, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"{k + 1}.png")
  result = infer.run_inference(str(mask_export), str(tmp_path / "*.png"),
                               str(tmp_path / "out"), score_threshold=0.5)
  rows = json.loads((tmp_path / "out" / "detections.json").read_text())
  assert rows and len(rows) == len(result.detections)
  want = api.detect(mask_model, images)
  for k, image in enumerate(images):
    got = [r for r in rows if r["image_id"] == k + 1]
    keep = np.flatnonzero(want["scores"][k] >= 0.5)
    assert len(got) == len(keep) > 0
    decoded = np.stack([mask_util.decode(r["segmentation"]) for r in got])
    assert got[0]["segmentation"]["size"] == [48, 80]
    assert (decoded != want["masks"][k][keep]).mean() < 1e-3
    drawn = np.asarray(Image.open(tmp_path / "out" / f"{k + 1}.png").convert("RGB"))
    boxes_only = infer.read_image(str(tmp_path / f"{k + 1}.png"))
    inside = decoded.any(0).astype(bool)
    # The masks' pixels are tinted (boxes and labels cover only some of them).
    assert (drawn[inside] != boxes_only[inside]).any(-1).mean() > 0.9


def test_litert_fp32_serves_the_saved_models_masks(mask_export):
  """The same S x S uint8 images into both (the SavedModel's resize is then the identity):
  the same detection_masks rows; and the LiteRT runner pastes them at each image's size."""
  if not (mask_export / "model_fp32.tflite").exists():
    pytest.skip("LiteRT export needs pip install ai-edge-litert")
  from detlab.export import tflite  # pylint: disable=import-outside-toplevel
  images = np.random.RandomState(5).randint(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  serve = tf.saved_model.load(str(mask_export / "saved_model")).signatures["serving_default"]
  want = {k: v.numpy() for k, v in serve(input_tensor=tf.constant(images)).items()}
  for i in range(2):
    got = tflite.run_tflite(str(mask_export / "model_fp32.tflite"), images[i:i + 1])
    n = int(want["num_detections"][i])
    assert int(got["num_detections"][0]) == n > 0
    same = np.all(np.abs(got["detection_boxes"][0, :n] - want["detection_boxes"][i, :n])
                  < 1e-3, -1)
    assert same.mean() > 0.9
    difference = np.abs(got["detection_masks"][0, :n][same] -
                        want["detection_masks"][i, :n][same])
    assert difference.max() < 1e-4, difference.max()
  picture = _images()[0]  # 48 x 80: letterboxed
  lite = runners.load_runner(str(mask_export / "model_fp32.tflite"))([picture])
  saved = runners.load_runner(str(mask_export / "saved_model"))([picture])
  assert lite["masks"][0].shape == saved["masks"][0].shape == (100, 48, 80)
  n = saved["num_detections"][0]
  # The letterbox rounds resized pixels to uint8: rows of nearly the same box, nearly the
  # same mask.
  same = np.all(np.abs(lite["boxes"][0, :n] - saved["boxes"][0, :n]) < 0.5, -1)
  assert same.mean() > 0.5
  assert (lite["masks"][0][:n][same] != saved["masks"][0][:n][same]).mean() < 0.01


def test_openvino_fp32_serves_the_saved_models_masks(mask_export):
  """As the LiteRT test: the same detections and detection_masks rows, 0 past
  num_detections; the OpenVINO runner pastes them as the SavedModel's runner does and
  detlab.infer writes them as RLE."""
  if not (mask_export / "openvino_fp32").exists():
    pytest.skip("OpenVINO export needs pip install 'detlab[openvino]'")
  from detlab.export.openvino import OpenVinoDetector  # pylint: disable=import-outside-toplevel
  assert (mask_export / "openvino_fp32" / "mask.xml").exists()
  images = np.random.RandomState(5).randint(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  serve = tf.saved_model.load(str(mask_export / "saved_model")).signatures["serving_default"]
  want = {k: v.numpy() for k, v in serve(input_tensor=tf.constant(images)).items()}
  got = OpenVinoDetector(str(mask_export / "openvino_fp32"))(images)
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
  # Masks that vary (over boxes and pixels) far more than the tolerance.
  assert np.ptp(got["detection_masks"][0, :int(want["num_detections"][0])]) > 0.02
  picture = _images()[0]  # 48 x 80: letterboxed
  xml = str(mask_export / "openvino_fp32" / "model.xml")
  runner = runners.load_runner(xml)
  ov = runner([picture])
  saved = runners.load_runner(str(mask_export / "saved_model"))([picture])
  assert ov["masks"][0].shape == saved["masks"][0].shape == (100, 48, 80)
  n = saved["num_detections"][0]
  same = np.all(np.abs(ov["boxes"][0, :n] - saved["boxes"][0, :n]) < 0.5, -1)
  assert same.mean() > 0.5
  assert (ov["masks"][0][:n][same] != saved["masks"][0][:n][same]).mean() < 0.01
  assert ov["masks"][0][:n].any() and not ov["masks"][0][n:].any()
  rows = infer.coco_results(1, ov, 0, 0.5)
  keep = np.flatnonzero(ov["scores"][0] >= 0.5)
  assert len(rows) == len(keep) > 0
  decoded = np.stack([mask_util.decode(r["segmentation"]) for r in rows])
  np.testing.assert_array_equal(decoded, ov["masks"][0][keep])


def test_formats_without_masks_are_refused_by_name(mask_model_dir, tmp_path):
  with pytest.raises(exporter.ExportError, match="tflite_int8.*only saved_model, tflite_fp32, "
                     "tflite_fp16, openvino_fp32 serve detection_masks"):
    exporter.export(str(mask_model_dir), str(tmp_path / "out"), ["saved_model", "tflite_int8"])
  assert not (tmp_path / "out").exists()
  with pytest.raises(exporter.ExportError, match="openvino_int8: NNCF INT8 .* mask AP"):
    exporter.export(str(mask_model_dir), str(tmp_path / "out"), ["openvino_int8"])
