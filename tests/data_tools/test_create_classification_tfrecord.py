"""The class-folder converter: labels from sorted folder names, the label map reused for eval
(and a foreign class refused), every bad file reported with nothing written, odd pixel
formats converted to 8-bit RGB, and the records read back with the right pixels."""
import io
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from data_tools import create_classification_tfrecord as tool
from detlab.data.classification_example import ENCODED, LABEL


def _save(path, array, mode=None, fmt="PNG"):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode).save(path, format=fmt) if mode else \
      Image.fromarray(array).save(path, format=fmt)
  return path


def _rgb(value, size=(6, 5)):
  return np.full(size + (3,), value, np.uint8)


def _read(pattern):
  rows = []
  for path in sorted(tf.io.gfile.glob(pattern)):
    for raw in tf.data.TFRecordDataset(path):
      ex = tf.train.Example.FromString(raw.numpy()).features.feature
      image = tf.io.decode_image(ex[ENCODED].bytes_list.value[0], channels=3).numpy()
      rows.append((ex["image/filename"].bytes_list.value[0].decode(),
                   ex[LABEL].int64_list.value[0], image))
  return sorted(rows, key=lambda r: r[0])


def test_labels_from_sorted_folders_and_conversions(tmp_path):
  root = tmp_path / "train"
  _save(root / "zebra" / "a.jpg", _rgb(200), fmt="JPEG")
  _save(root / "cat" / "rgb.png", _rgb(10))
  _save(root / "cat" / "gray.png", np.full((6, 5), 77, np.uint8), "L")
  _save(root / "cat" / "rgba.png", np.dstack([_rgb(30), np.full((6, 5), 9, np.uint8)]), "RGBA")
  Image.fromarray(_rgb(0)).convert("CMYK").save(root / "cat" / "cmyk.jpg", format="JPEG")
  Image.fromarray(np.full((6, 5), 40000, np.uint16)).save(root / "cat" / "g16.png")
  (root / "cat" / ".DS_Store").write_bytes(b"junk")
  log = io.StringIO()
  summary = tool.convert(str(root), str(tmp_path / "out" / "train"), 2, stream=log)
  assert json.loads((tmp_path / "out" / "label_map.json").read_text()) == {"0": "cat",
                                                                            "1": "zebra"}
  rows = _read(str(tmp_path / "out" / "train-*-of-00002.tfrecord"))
  by_name = {name: (label, image) for name, label, image in rows}
  assert sorted(by_name) == ["cat/cmyk.jpg", "cat/g16.png", "cat/gray.png", "cat/rgb.png",
                             "cat/rgba.png", "zebra/a.jpg"]
  assert by_name["zebra/a.jpg"][0] == 1 and by_name["cat/rgb.png"][0] == 0
  np.testing.assert_array_equal(by_name["cat/rgb.png"][1], _rgb(10))
  np.testing.assert_array_equal(by_name["cat/gray.png"][1], _rgb(77))
  np.testing.assert_array_equal(by_name["cat/rgba.png"][1], _rgb(30))
  np.testing.assert_array_equal(by_name["cat/g16.png"][1], _rgb(round(40000 / 65535 * 255)))
  assert by_name["cat/cmyk.jpg"][1].shape == (6, 5, 3)
  assert summary["converted"] == {"grayscale": 1, "RGBA (alpha dropped)": 1, "CMYK": 1,
                                  "16-bit, grayscale": 1}
  assert "Converted to 8-bit RGB" in log.getvalue() and "16-bit" in log.getvalue()


def test_eval_folder_reuses_the_label_map_and_refuses_a_foreign_class(tmp_path):
  _save(tmp_path / "train" / "a" / "1.png", _rgb(1))
  _save(tmp_path / "train" / "b" / "1.png", _rgb(2))
  tool.convert(str(tmp_path / "train"), str(tmp_path / "out" / "train"), 1, stream=io.StringIO())
  label_map = str(tmp_path / "out" / "label_map.json")
  _save(tmp_path / "val" / "b" / "1.png", _rgb(3))
  tool.convert(str(tmp_path / "val"), str(tmp_path / "out" / "val"), 1, label_map,
               stream=io.StringIO())
  assert [r[1] for r in _read(str(tmp_path / "out" / "val-*"))] == [1]  # b keeps label 1
  _save(tmp_path / "val" / "dog" / "1.png", _rgb(4))
  with pytest.raises(tool.ConversionError, match=r"\['dog'\].*not in the label map"):
    tool.convert(str(tmp_path / "val"), str(tmp_path / "out" / "val2"), 1, label_map,
                 stream=io.StringIO())
  assert not tf.io.gfile.glob(str(tmp_path / "out" / "val2*"))


def test_every_bad_file_is_reported_and_nothing_is_written(tmp_path):
  root = tmp_path / "train"
  _save(root / "a" / "ok.png", _rgb(5))
  good = io.BytesIO()
  Image.fromarray(_rgb(6, (40, 40))).save(good, format="JPEG")
  (root / "a" / "truncated.jpg").write_bytes(good.getvalue()[:200])
  (root / "a" / "notes.txt").write_text("not an image")
  (root / "empty").mkdir()
  with pytest.raises(tool.ConversionError) as error:
    tool.convert(str(root), str(tmp_path / "out" / "train"), 1, stream=io.StringIO())
  text = str(error.value)
  assert "3 problem(s)" in text and "nothing written" in text
  assert "truncated.jpg: corrupt image" in text
  assert "notes.txt: not an image file" in text
  assert "empty: empty class folder" in text
  assert not (tmp_path / "out").exists()
