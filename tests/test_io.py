"""detlab.io: whole-file writes (text, strict JSON, PNG) on any tf.io.gfile file system."""
import json

import numpy as np
import pytest
import tensorflow as tf

from detlab import io


@pytest.fixture(params=["ram", "local"])
def root(request, tmp_path):
  """ram:// (TF's in-memory file system, which appends when a file is opened again) and a local
  directory."""
  path = f"ram://detlab_io_test_{request.node.name}" if request.param == "ram" else str(tmp_path)
  tf.io.gfile.makedirs(path)
  yield path
  if request.param == "ram":
    tf.io.gfile.rmtree(path)


def _refuse(constant):
  raise AssertionError(f"{constant} is not strict JSON")


def test_json_round_trip_is_strict_and_leaves_no_temporary_file(root):
  path = f"{root}/metrics.json"
  io.write_json(path, {"AP": np.float32(0.25), "per_class": {1: float("nan")},
                       "sizes": np.array([3, 4]), "bad": [float("inf"), -float("inf")]})
  with tf.io.gfile.GFile(path) as f:
    saved = json.loads(f.read(), parse_constant=_refuse)
  assert saved == {"AP": 0.25, "per_class": {"1": None}, "sizes": [3, 4], "bad": [None, None]}
  assert tf.io.gfile.listdir(root) == ["metrics.json"]


def test_a_rewrite_replaces_the_file(root):
  """Opening a ram:// file for writing again appends to it; write + rename replaces it."""
  path = f"{root}/state.json"
  io.write_json(path, {"step": 1, "note": "a longer first version of the file"})
  io.write_json(path, {"step": 2})
  with tf.io.gfile.GFile(path) as f:
    assert json.load(f) == {"step": 2}
  io.write_text(f"{root}/note.txt", "first\n")
  io.write_text(f"{root}/note.txt", "second\n")
  with tf.io.gfile.GFile(f"{root}/note.txt") as f:
    assert f.read() == "second\n"
  assert sorted(tf.io.gfile.listdir(root)) == ["note.txt", "state.json"]


def test_png_round_trip_is_lossless(root):
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = f"{root}/panel.png"
  io.write_png(path, np.zeros((9, 9, 3), np.uint8))
  io.write_png(path, image)
  np.testing.assert_array_equal(io.read_png(path), image)
  assert tf.io.gfile.listdir(root) == ["panel.png"]


def test_a_float_image_is_refused_by_name(root):
  with pytest.raises(ValueError, match="write_png needs a uint8 image, got float32"):
    io.write_png(f"{root}/x.png", np.zeros((2, 2, 3), np.float32))
  assert tf.io.gfile.listdir(root) == []
