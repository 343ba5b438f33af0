"""load_runner: every exported format and the model_dir detect alike, in original pixels.

A tiny detector (the tests' tiny backbone, 64 px, levels 3-5) keeps export short; the export
itself is tested in test_saved_model.py / test_tflite.py, this file tests what runs it."""
import numpy as np
import pytest

from detlab import api
from detlab.export import runners
from tiny_export import NAMES, openvino_ready  # pylint: disable=import-error

@pytest.fixture(scope="module")
def pictures():
  """Two images of one size and one of another (narrower than the model input)."""
  rng = np.random.RandomState(0)
  return [rng.randint(0, 256, (96, 160, 3), dtype=np.uint8),
          rng.randint(0, 256, (96, 160, 3), dtype=np.uint8),
          rng.randint(0, 256, (50, 40, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def saved_model_detections(tiny_export, pictures):
  return runners.load_runner(str(tiny_export / "saved_model"))(pictures)


def _assert_agree(got: dict, want: dict, box_atol: float, score_atol: float, top: int = 20):
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  np.testing.assert_array_equal(got["classes"][:, :top], want["classes"][:, :top])
  np.testing.assert_allclose(got["scores"][:, :top], want["scores"][:, :top], atol=score_atol)
  np.testing.assert_allclose(got["boxes"][:, :top], want["boxes"][:, :top], atol=box_atol)


def test_model_dir_and_saved_model_runners_agree(tiny_model_dir, tiny_export, pictures,
                                                 saved_model_detections):
  """The model_dir runner is detlab.api.detect (unfolded); the SavedModel (folded) gives the
  same detections to 1e-3 px, whether named as OUT or OUT/saved_model."""
  model_dir_runner = runners.load_runner(str(tiny_model_dir))
  assert isinstance(model_dir_runner, runners.ModelDirRunner)
  got = model_dir_runner(pictures)
  want = api.detect(model_dir_runner.model, pictures)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])
  assert got["boxes"].shape == (3, 100, 4) and got["classes"].dtype == np.int32
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
  _assert_agree(got, saved_model_detections, box_atol=0.02, score_atol=1e-4)
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
