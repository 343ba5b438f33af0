"""COCO converter on the problem-laden fixture: refuses, repairs on request, round-trips."""
import collections
import io
import json
import os

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_util

from bad_coco import CATEGORIES, CLEAN_IMAGE_IDS, MAX_INSTANCES, RED_BOX, make_crowd_mask
from data_tools import create_coco_tfrecord
from detlab.data.tf_example import decode_example, decode_extras


def _records(pattern):
  return {int(decode_example(r)["source_id"].numpy()): r
          for r in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)))}


def _reference_mask(segmentation, height, width):
  """pycocotools straight, as COCO's own API does it (annToRLE), independent of the tool."""
  if isinstance(segmentation, list):
    rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation["counts"], list):
    rle = mask_util.frPyObjects(segmentation, height, width)
  else:
    rle = dict(segmentation, counts=segmentation["counts"].encode())
  return mask_util.decode(rle)


def test_refuses_with_a_table_and_writes_nothing(coco_fixture, tmp_path):
  log = io.StringIO()
  status = create_coco_tfrecord.convert(
      coco_fixture["image_dir"], coco_fixture["json"], str(tmp_path / "out" / "train"),
      num_shards=2, max_instances=MAX_INSTANCES, stream=log)
  assert status == 1
  assert "Refusing" in log.getvalue() and "missing_image" in log.getvalue()
  assert not (tmp_path / "out").exists()


def test_repaired_conversion_reports_and_writes_shards(converted):
  assert converted["status"] == 0, converted["log"]
  names = sorted(os.listdir(converted["dir"]))
  assert names == ["label_map.json", "repaired.json", "train-00000-of-00002.tfrecord",
                   "train-00001-of-00002.tfrecord"]
  label_map = json.loads((converted["dir"] / "label_map.json").read_text())
  assert label_map == {"1": "person", "7": "car", "90": "toothbrush"}
  log = converted["log"]
  assert "Wrote 7 images (1 without annotations)" in log
  assert "1 clipped box" in log and "6 dropped image" in log
  assert "re-encoded as RGB JPEG (EXIF orientation)" in log
  assert "(PNG L)" in log and "(JPEG CMYK)" in log


def test_clean_records_round_trip_box_for_box(coco_fixture, converted):
  records = _records(converted["pattern"])
  assert set(records) == CLEAN_IMAGE_IDS
  repaired = converted["repaired"]
  sizes = {e["id"]: (e["height"], e["width"]) for e in repaired["images"]}
  by_image = collections.defaultdict(list)
  for ann in repaired["annotations"]:
    by_image[ann["image_id"]].append(ann)
  original = {(a["id"], a["image_id"]): a for a in coco_fixture["coco"]["annotations"]}
  for image_id, record in records.items():
    data = {k: v.numpy() for k, v in decode_example(record).items()}
    extras = {k: v.numpy() for k, v in decode_extras(record).items()}
    height, width = sizes[image_id]
    assert data["image"].shape == (height, width, 3)
    anns = by_image[image_id]
    xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    want = np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3],
                     xywh[:, 0] + xywh[:, 2]], -1)
    np.testing.assert_allclose(data["boxes"], want, atol=1e-3)
    np.testing.assert_array_equal(data["classes"], [a["category_id"] for a in anns])
    np.testing.assert_array_equal(data["is_crowd"], [a["iscrowd"] for a in anns])
    np.testing.assert_allclose(data["areas"], [a["area"] for a in anns])
    assert [t.decode() for t in extras["class_text"]] == [
        {c["id"]: c["name"] for c in CATEGORIES}[a["category_id"]] for a in anns]
    assert extras["masks"].shape == (len(anns), height, width)
    for mask, ann in zip(extras["masks"], anns):
      np.testing.assert_array_equal(mask, _reference_mask(ann["segmentation"], height, width))
      assert mask.sum() > 0
    for ann in anns:  # untouched annotations are the input's, not only the repaired JSON's
      if ann["id"] != 6 and (ann["id"], image_id) in original:
        assert ann["bbox"] == original[ann["id"], image_id]["bbox"]
  crowd = decode_extras(records[6])["masks"].numpy()  # RLEs against the source arrays
  np.testing.assert_array_equal(crowd[0], make_crowd_mask())
  np.testing.assert_array_equal(crowd[1], make_crowd_mask()[::-1])
  assert len(by_image[7]) == 5  # more than max_instances: a warning, nothing dropped
  assert sorted({c for i in records for c in decode_example(records[i])["classes"].numpy()}
                ) == [1, 7, 90]


def test_images_are_stored_upright_rgb_jpeg(coco_fixture, converted):
  records = _records(converted["pattern"])
  with open(os.path.join(coco_fixture["image_dir"], "a.jpg"), "rb") as f:
    original = f.read()
  stored = tf.train.Example.FromString(records[1].numpy())
  assert stored.features.feature["image/encoded"].bytes_list.value[0] == original  # as is
  for image_id in (3, 4):  # grayscale PNG and CMYK JPEG -> RGB JPEG
    encoded = tf.train.Example.FromString(records[image_id].numpy()).features.feature[
        "image/encoded"].bytes_list.value[0]
    assert encoded[:3] == b"\xff\xd8\xff"
  gray = decode_example(records[3])["image"].numpy().astype(int)
  assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 8  # still gray after JPEG
  image = decode_example(records[5])["image"].numpy().astype(int)
  x, y, w, h = RED_BOX
  inside = image[y + 2:y + h - 2, x + 2:x + w - 2].reshape(-1, 3).mean(0)
  assert inside[0] > 180 and inside[1] < 70  # the red square is under its box, upright
  assert image[:y].mean() < 60  # and nowhere above it


def test_eval_pipeline_reads_the_records(converted):
  from detlab.data.detection_input import InputConfig, make_dataset
  from detlab.detection.anchors import AnchorConfig
  config = InputConfig(converted["pattern"], is_training=False, max_instances=8)
  batch = next(iter(make_dataset(config, AnchorConfig(image_size=128), num_classes=90,
                                 batch_size=7)))
  ids = [int(s) for s in batch["source_ids"].numpy()]
  assert sorted(ids) == sorted(CLEAN_IMAGE_IDS)
  counts = dict(zip(ids, batch["gt_count"].numpy()))
  assert counts == {1: 2, 2: 0, 3: 2, 4: 1, 5: 1, 6: 3, 7: 5}
  classes = batch["gt_classes"].numpy()
  assert sorted(set(classes[classes >= 0])) == [0, 6, 89]  # class index = category id - 1
