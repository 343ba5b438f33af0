"""load_runner: every exported format and the model_dir detect alike, in original pixels.

A tiny detector (the tests' tiny backbone, 64 px, levels 3-5) keeps export short; the export
itself is tested in test_saved_model.py / test_tflite.py, this file tests what runs it. The
model_dir runner is checked against detections computed here from the model's raw network
(normalise, aspect-preserving resize, bottom/right pad, the heads' outputs flattened level by
level, detlab's postprocess, boxes / the per-axis resize scale), not against detlab.api.detect,
which is what that runner calls."""
import numpy as np
import pytest
import tensorflow as tf

from detlab import api
from detlab.backbones import input_convention
from detlab.backbones.conventions import IMAGENET_MEAN_STD
from detlab.detection.postprocess import postprocess
from detlab.export import runners
from tiny_export import NAMES, openvino_ready  # pylint: disable=import-error


@pytest.fixture(scope="module")
def model_dir_runner(tiny_model_dir):
  return runners.load_runner(str(tiny_model_dir))



def _assert_agree(got: dict, want: dict, box_atol: float, score_atol: float, top: int = 20):
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  np.testing.assert_array_equal(got["classes"][:, :top], want["classes"][:, :top])
  np.testing.assert_allclose(got["scores"][:, :top], want["scores"][:, :top], atol=score_atol)
  np.testing.assert_allclose(got["boxes"][:, :top], want["boxes"][:, :top], atol=box_atol)


def network_detections(model, image: np.ndarray) -> dict:
  """One image's detections from the raw network, with the input contract written out here:
  ImageNet mean/std, resize by min(S/h, S/w) to the rounded size (bilinear), zero pad at the
  bottom/right (the mean colour), flatten each level's [h, w, A*K] / [h, w, A*4] outputs in
  (y, x, anchor) order, postprocess clipping to the resized image (not the pad), divide boxes
  by the per-axis scale, clip, class + 1."""
  size = model.anchors.image_size
  height, width = image.shape[:2]
  mean, std = np.array(IMAGENET_MEAN_STD.mean), np.array(IMAGENET_MEAN_STD.std)
  ratio = min(size / height, size / width)
  resized = (round(height * ratio), round(width * ratio))
  pixels = tf.image.resize(((image.astype(np.float32) - mean) / std)[None], resized)
  pixels = tf.pad(pixels, [[0, 0], [0, size - resized[0]], [0, size - resized[1]], [0, 0]])
  class_outputs, box_outputs = model(pixels, training=False)
  levels = [str(l) for l in range(model.anchors.min_level, model.anchors.max_level + 1)]
  logits = tf.concat([tf.reshape(class_outputs[l], [1, -1, model.num_classes]) for l in levels], 1)
  deltas = tf.concat([tf.reshape(box_outputs[l], [1, -1, 4]) for l in levels], 1)
  _, task = api.inference_setup(model)  # the model_dir's configured NMS
  window = tf.constant([[0.0, 0.0, resized[0], resized[1]]])  # boxes wholly in the pad go
  out = {k: v.numpy()[0] for k, v in postprocess(logits, deltas, model.anchors.boxes(), size,
                                                 task.postprocess_config, window).items()}
  scale = np.array([resized[0] / height, resized[1] / width] * 2)
  count = int(out["num_detections"])
  boxes = np.clip(out["boxes"] / scale, 0.0, [height, width, height, width])
  valid = np.arange(len(boxes)) < count
  return {"boxes": np.where(valid[:, None], boxes, 0.0), "scores": out["scores"],
          "classes": np.where(valid, out["classes"] + 1, 0), "num_detections": count}


def test_model_dir_runner_equals_the_network_with_the_input_contract(model_dir_runner, pictures):
  """Resized pixels differ from the eval parser's by float rounding only, so scores agree to
  1e-5; rows whose scores tie within that may come in either order."""
  runner = model_dir_runner
  assert isinstance(runner, runners.ModelDirRunner)
  assert input_convention(runner.model, default=IMAGENET_MEAN_STD) == IMAGENET_MEAN_STD
  got = runner(pictures)
  assert got["boxes"].shape == (3, 100, 4) and got["classes"].dtype == np.int32
  for i, image in enumerate(pictures):
    want = network_detections(runner.model, image)
    assert got["num_detections"][i] == want["num_detections"] > 20
    np.testing.assert_allclose(got["scores"][i], want["scores"], atol=1e-5)
    for k in range(want["num_detections"]):
      tied = np.flatnonzero(np.abs(want["scores"] - got["scores"][i, k]) <= 1e-5)
      assert any(got["classes"][i, k] == want["classes"][j] and
                 np.allclose(got["boxes"][i, k], want["boxes"][j], atol=1e-2) for j in tied), (
                     f"image {i} row {k}: class {got['classes'][i, k]} box {got['boxes'][i, k]}"
                     f" not among the network's rows {tied.tolist()} of that score")


def test_model_dir_and_saved_model_runners_agree(model_dir_runner, tiny_export, pictures,
                                                 saved_model_detections):
  """The model_dir runner (unfolded) and the SavedModel (folded) give the same detections to
  1e-3 px, whether named as OUT or OUT/saved_model."""
  got = model_dir_runner(pictures)
  _assert_agree(saved_model_detections, got, box_atol=1e-3, score_atol=1e-5)
  out_runner = runners.load_runner(str(tiny_export))
  assert isinstance(out_runner, runners.SavedModelRunner)
  np.testing.assert_array_equal(out_runner(pictures[2])["boxes"],
                                saved_model_detections["boxes"][2:])
  assert model_dir_runner.category_names == NAMES == out_runner.category_names


def test_tflite_runner_maps_boxes_back_to_original_pixels(tiny_export, pictures,
                                                          saved_model_detections):
  """Letterboxed uint8 in, boxes divided by the per-axis resize scale: the SavedModel's
  detections to 0.02 px (a single min-side scale instead would be off by ~1 px on the
  96 x 160 images: 96 * 0.4 = 38.4 rows resized to 38)."""
  runner = runners.load_runner(str(tiny_export / "model_fp32.tflite"))
  assert isinstance(runner, runners.TfliteRunner) and runner.category_names == NAMES
  got = runner(pictures)
  # Its rows are the SavedModel's first ones (all of them for FP32, which drops boxes wholly
  # in the letterbox pad before NMS as the SavedModel does; INT8 leaves them as zero-area rows
  # that the runner drops, so fewer rows: 1, 1 and 14 of 100 on these mostly-pad inputs).
  want = saved_model_detections
  assert (got["num_detections"] <= want["num_detections"]).all()
  for i, num in enumerate(got["num_detections"]):
    assert num >= 1
    boxes = got["boxes"][i, :num]
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    np.testing.assert_array_equal(got["classes"][i, :num], want["classes"][i, :num])
    np.testing.assert_allclose(got["scores"][i, :num], want["scores"][i, :num], atol=1e-4)
    np.testing.assert_allclose(boxes, want["boxes"][i, :num], atol=0.02)
  assert got["boxes"][:2, :, 2].max() > 64  # beyond the 64-px model input: mapped back
  assert got["boxes"][2, :, 2].max() <= 50 and got["boxes"][2, :, 3].max() <= 40


def test_openvino_runner_agrees_with_saved_model(tiny_export, pictures,
                                                 saved_model_detections):
  if not openvino_ready():
    pytest.skip("the OpenVINO runner needs pip install openvino nncf")
  for path in (tiny_export / "openvino_fp32", tiny_export / "openvino_fp32" / "model.xml"):
    runner = runners.load_runner(str(path))
    assert isinstance(runner, runners.OpenVinoRunner) and runner.category_names == NAMES
  _assert_agree(runner(pictures), saved_model_detections, box_atol=0.02, score_atol=1e-4)


def test_unknown_paths_list_the_accepted_forms(tmp_path):
  with pytest.raises(runners.RunnerError, match=r"does not exist.*Accepted: a training "
                     r"model_dir.*\.tflite.*model\.xml"):
    runners.load_runner(str(tmp_path / "missing.pb"))
  (tmp_path / "notes.txt").write_text("not a model")
  with pytest.raises(runners.RunnerError, match="is none of them"):
    runners.load_runner(str(tmp_path))


def test_runner_refuses_non_rgb_uint8_images(saved_model_detections, tiny_export):
  del saved_model_detections
  runner = runners.load_runner(str(tiny_export / "saved_model"))
  with pytest.raises(ValueError, match="expected uint8"):
    runner(np.zeros((20, 20), np.uint8))
