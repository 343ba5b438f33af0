"""python -m detlab.infer: COCO results equal to detlab.api.detect, one PNG per image, odd
image files converted (grey, RGBA, 16-bit, EXIF-rotated) and a corrupt one skipped by name."""
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from detlab import api
from detlab import infer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = orientation
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
  return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """Six files (sorted by name): RGB, grey, RGBA, 16-bit grey PNGs, an EXIF-rotated JPEG
  and a truncated PNG; and the pixels each should be read as."""
  directory = tmp_path_factory.mktemp("images")
  rng = np.random.RandomState(3)
  rgb = rng.randint(0, 256, (96, 160, 3), dtype=np.uint8)
  grey = rng.randint(0, 256, (70, 50, 1), dtype=np.uint8)
  rgba = rng.randint(0, 256, (40, 90, 4), dtype=np.uint8)
  deep = rng.randint(0, 65536, (60, 64, 1)).astype(np.uint16)
  sideways = rng.randint(0, 256, (48, 80, 3), dtype=np.uint8)  # stored 80 wide, 48 high
  files = {"a_rgb.png": tf.io.encode_png(rgb).numpy(),
           "b_grey.png": tf.io.encode_png(grey).numpy(),
           "c_rgba.png": tf.io.encode_png(rgba).numpy(),
           "d_16bit.png": tf.io.encode_png(deep).numpy(),
           "e_exif.jpg": _jpeg_with_orientation(sideways, 6),
           "f_corrupt.png": tf.io.encode_png(rgb).numpy()[:400]}
  for name, data in files.items():
    (directory / name).write_bytes(data)
  # Orientation 6: the camera was turned; upright is the stored image turned 90 deg clockwise.
  stored = np.asarray(Image.open(io.BytesIO(files["e_exif.jpg"])).convert("RGB"))
  expected = {"a_rgb.png": rgb, "b_grey.png": np.repeat(grey, 3, -1),
              "c_rgba.png": rgba[..., :3],
              "d_16bit.png": np.repeat((deep >> 8).astype(np.uint8), 3, -1),
              "e_exif.jpg": np.rot90(stored, k=-1)}
  return directory, expected


def test_odd_image_files_are_read_as_upright_rgb(image_files):
  directory, expected = image_files
  for name, pixels in expected.items():
    got = infer.read_image(str(directory / name))
    assert got.dtype == np.uint8 and got.shape == pixels.shape, name
    np.testing.assert_array_equal(got, pixels, err_msg=name)
  assert infer.read_image(str(directory / "d_16bit.png")).std() > 50  # not clipped to 255
  with pytest.raises(ValueError, match="cannot decode .*f_corrupt.png"):
    infer.read_image(str(directory / "f_corrupt.png"))


def test_image_ids_are_numeric_stems_else_positions():
  assert infer.image_ids(["/a/000000139.jpg", "gs://b/7.png"]) == [139, 7]
  assert infer.image_ids(["/a/1.jpg", "/b/01.jpg"]) == [1, 2]  # equal numbers: positions
  assert infer.image_ids(["/a/12.jpg", "/a/cat.jpg"]) == [1, 2]


def test_infer_writes_coco_results_equal_to_api_detect(tiny_model_dir, tiny_export,
                                                       image_files, tmp_path, capsys):
  """The export directory's SavedModel through infer; the same images through
  detlab.api.detect on the model_dir: the same rows (bbox rounded to 1e-3 px)."""
  directory, expected = image_files
  result = infer.run_inference(str(tiny_export), str(directory / "*"), str(tmp_path / "out"),
                               score_threshold=0.55)
  assert "skipped" in capsys.readouterr().err and "f_corrupt.png" in result.skipped[0]["error"]
  assert [s["file_name"] for s in result.skipped] == [str(directory / "f_corrupt.png")]
  rows = json.loads((tmp_path / "out" / "detections.json").read_text())
  assert rows and all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in rows)
  images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
  assert [i["id"] for i in images] == [1, 2, 3, 4, 5]  # names are not numbers: positions
  model = api.load_detector([str(tiny_model_dir / "config.gin")],
                            checkpoint=str(tiny_model_dir))
  for entry in images:
    pixels = expected[os.path.basename(entry["file_name"])]
    assert (entry["height"], entry["width"]) == pixels.shape[:2]
    want = api.detect(model, [pixels])
    keep = want["scores"][0] >= 0.55
    y1, x1, y2, x2 = want["boxes"][0][keep].T
    got = [r for r in rows if r["image_id"] == entry["id"]]
    assert len(got) == keep.sum() > 0
    np.testing.assert_allclose([r["bbox"] for r in got],
                               np.stack([x1, y1, x2 - x1, y2 - y1], -1), atol=2e-3)
    np.testing.assert_allclose([r["score"] for r in got], want["scores"][0][keep], atol=2e-5)
    assert [r["category_id"] for r in got] == want["classes"][0][keep].tolist()
    drawn = Image.open(tmp_path / "out" / entry["output_file"])
    assert drawn.size == (pixels.shape[1], pixels.shape[0])
    # Boxes drawn: the picture differs from the image read.
    assert (np.asarray(drawn.convert("RGB")) != pixels).any()
  assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
      "a_rgb.png", "b_grey.png", "c_rgba.png", "d_16bit.png", "e_exif.png"]


def test_empty_glob_and_bad_label_map_name_the_fix(tiny_export, tmp_path):
  with pytest.raises(infer.InferError, match="matches no file.*--images="):
    infer.run_inference(str(tiny_export), str(tmp_path / "*.jpg"), str(tmp_path / "out"))
  (tmp_path / "x.png").write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
  with pytest.raises(infer.InferError, match="--label_map_file=.*does not exist"):
    infer.run_inference(str(tiny_export), str(tmp_path / "*.png"), str(tmp_path / "out"),
                        label_map_file=str(tmp_path / "none.json"))


def test_cli_runs_a_tflite_file_with_a_progress_line(tiny_export, image_files, tmp_path):
  """The command line on the LiteRT file; a label map file overrides the model's names."""
  directory, _ = image_files
  (tmp_path / "labels.json").write_text('{"1": "one", "2": "two", "3": "three"}')
  run = subprocess.run(
      [sys.executable, "-m", "detlab.infer", f"--model={tiny_export / 'model_fp32.tflite'}",
       f"--images={directory / 'a_*.png'},{directory / 'f_*.png'}",
       f"--output_dir={tmp_path / 'out'}", "--score_threshold=0.5",
       f"--label_map_file={tmp_path / 'labels.json'}"],
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "infer 2/2 img (100%)" in run.stderr
  assert f"skipped {directory / 'f_corrupt.png'}" in run.stderr
  assert "on 1 images (1 skipped)" in run.stdout
  rows = json.loads((tmp_path / "out" / "detections.json").read_text())
  assert rows and {r["image_id"] for r in rows} == {1}
  assert (tmp_path / "out" / "a_rgb.png").exists()
