"""create_segmentation_tfrecord: VOC layout (palette / single-channel), COCO -> semantic maps,
every bad input reported by file with nothing written."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_tools.create_segmentation_tfrecord import ConversionError, convert
from detlab.data.segmentation_example import decode_segmentation_example


def _image(path, h=12, w=16):
  Image.fromarray(np.full([h, w, 3], 90, np.uint8)).save(path)


def _palette_png(path, labels):
  im = Image.fromarray(labels.astype(np.uint8), mode="P")
  im.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
  im.save(path)


def _read_all(prefix):
  out = {}
  for path in sorted(tf.io.gfile.glob(prefix + "-*.tfrecord")):
    for record in tf.data.TFRecordDataset(path):
      d = decode_segmentation_example(record)
      out[d["source_id"].numpy().decode()] = (d["image"].numpy(), d["labels"].numpy())
  return out


def _labels(h=12, w=16, seed=0):
  labels = np.random.default_rng(seed).integers(0, 4, [h, w]).astype(np.uint8)
  labels[0, :3] = 255
  return labels


def test_voc_palette_and_single_channel_masks_round_trip(tmp_path):
  images, masks = tmp_path / "img", tmp_path / "mask"
  images.mkdir(), masks.mkdir()
  expected = {}
  for i, stem in enumerate(["a", "b", "c"]):
    _image(images / f"{stem}.jpg")
    expected[stem] = _labels(seed=i)
    if stem == "b":
      Image.fromarray(expected[stem], mode="L").save(masks / f"{stem}.png")
    else:
      _palette_png(masks / f"{stem}.png", expected[stem])
  (tmp_path / "split.txt").write_text("a\nc\n")
  summary = convert(str(images), str(tmp_path / "out" / "train"), num_shards=2,
                    mask_dir=str(masks), num_classes=4)
  assert summary["images"] == 3 and len(summary["shards"]) == 2
  records = _read_all(str(tmp_path / "out" / "train"))
  for stem, labels in expected.items():
    np.testing.assert_array_equal(records[stem][1], labels)  # palette index = class
    assert records[stem][0].shape == (12, 16, 3)
  convert(str(images), str(tmp_path / "out" / "split"), num_shards=1, mask_dir=str(masks),
          split_file=str(tmp_path / "split.txt"))
  assert sorted(_read_all(str(tmp_path / "out" / "split"))) == ["a", "c"]


def test_every_bad_input_is_reported_by_file_and_nothing_is_written(tmp_path):
  images, masks = tmp_path / "img", tmp_path / "mask"
  images.mkdir(), masks.mkdir()
  for stem in ["good", "missing", "size", "label", "rgb", "deep"]:
    _image(images / f"{stem}.jpg")
  _palette_png(masks / "good.png", _labels())
  _palette_png(masks / "size.png", _labels(10, 16))
  bad = _labels()
  bad[5, 5] = 7
  Image.fromarray(bad, mode="L").save(masks / "label.png")
  Image.fromarray(np.zeros([12, 16, 3], np.uint8)).save(masks / "rgb.png")
  Image.fromarray(np.zeros([12, 16], np.uint16)).save(masks / "deep.png")
  with pytest.raises(ConversionError) as error:
    convert(str(images), str(tmp_path / "out" / "train"), num_shards=1, mask_dir=str(masks),
            num_classes=4)
  message = str(error.value)
  assert "5 problem(s)" in message
  assert f"missing mask {masks / 'missing.png'}" in message
  assert f"{masks / 'size.png'}: mask size 16x10" in message
  assert f"{masks / 'label.png'}: label value(s) [7] >= num_classes=4" in message
  assert f"{masks / 'rgb.png'}: an RGB colour mask, not a palette PNG" in message
  assert f"{masks / 'deep.png'}: wrong bit depth" in message
  assert "good" not in message
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_coco_polygons_rle_crowd_and_later_annotation_wins(tmp_path):
  images = tmp_path / "img"
  images.mkdir()
  _image(images / "000001.jpg", 20, 20)
  from pycocotools import mask as mask_util
  block = np.zeros([20, 20], np.uint8, order="F")
  block[10:20, 10:20] = 1
  rle = mask_util.encode(np.asfortranarray(block))
  rle["counts"] = rle["counts"].decode()
  crowd = np.zeros([20, 20], np.uint8)
  crowd[0:4, 16:20] = 1
  crowd_rle = mask_util.encode(np.asfortranarray(crowd))
  crowd_rle["counts"] = crowd_rle["counts"].decode()
  coco = {"images": [{"id": 1, "file_name": "000001.jpg", "height": 20, "width": 20}],
          "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "bus"}],
          "annotations": [
              # polygon square covering rows/cols 0..12, then an RLE square on top of it
              {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
               "segmentation": [[0, 0, 12, 0, 12, 12, 0, 12]]},
              {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": rle},
              {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 1,
               "segmentation": crowd_rle}]}
  (tmp_path / "instances.json").write_text(json.dumps(coco))
  convert(str(images), str(tmp_path / "out" / "val"), num_shards=1,
          object_annotations_file=str(tmp_path / "instances.json"), num_classes=8)
  labels = _read_all(str(tmp_path / "out" / "val"))["000001"][1]
  polygon = mask_util.decode(mask_util.merge(mask_util.frPyObjects(
      [[0, 0, 12, 0, 12, 12, 0, 12]], 20, 20))).astype(bool)
  expected = np.zeros([20, 20], np.uint8)
  expected[polygon] = 3
  expected[block.astype(bool)] = 7  # later wins over the overlap
  expected[crowd.astype(bool)] = 255
  np.testing.assert_array_equal(labels, expected)
  assert labels[11, 11] == 7 and labels[5, 5] == 3
  label_map = json.loads((tmp_path / "out" / "label_map.json").read_text())
  assert label_map == {"0": "background", "3": "car", "7": "bus"}


def test_needs_exactly_one_label_source(tmp_path):
  with pytest.raises(ConversionError, match="exactly one of --mask_dir"):
    convert(str(tmp_path), str(tmp_path / "x"))
