"""data_tools.make_digits_sets: deterministic, and every box, mask and label is the pasted
digit's (checked against the compositing itself and read back through detlab's decoders)."""
import glob
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from data_tools import make_digits_sets as digits_sets
from detlab.data.classification_input import decode_record
from detlab.data.segmentation_example import decode_segmentation_example
from detlab.data.tf_example import decode_example, decode_extras


@pytest.fixture(scope="module")
def sources():
  digits, labels = digits_sets.load_digits()
  return digits, labels, digits_sets.load_photos()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
  out = str(tmp_path_factory.mktemp("digits"))
  summary = digits_sets.make_sets(out, seed=3, limit_per_class=5, num_train_scenes=6,
                                  num_val_scenes=3, scene_size=64, max_digits=3, num_shards=2)
  return {"dir": out, **summary}


def _scene(sources, index, seed=5, size=96):
  digits, labels, photos = sources
  pool = np.arange(0, len(labels), 3)
  return digits_sets.render_scene(digits, labels, pool, photos, seed, 0, index, size, 4)


def test_the_real_sets_have_the_documented_sizes(sources):
  digits, labels, photos = sources
  assert digits.shape == (1797, 8, 8) and np.bincount(labels).tolist()[0] == 178
  assert [p.shape for p in photos] == [(427, 640, 3)] * 2
  split = digits_sets.split_indices(labels, 0.2, seed=0)
  assert (len(split["train"]), len(split["val"])) == (1438, 359)
  assert not set(split["train"]) & set(split["val"])
  assert all(abs(np.mean(labels[split["val"]] == c) - 0.1) < 0.01 for c in range(10))


def test_scenes_are_deterministic_per_seed_and_index(sources):
  first, again, other = _scene(sources, 4), _scene(sources, 4), _scene(sources, 5)
  for key in ("image", "boxes", "masks", "category_ids", "digit_indices"):
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["image"], other["image"])
  assert _scene(sources, 4, seed=6)["image"].tobytes() != first["image"].tobytes()


@pytest.mark.parametrize("index", range(4))
def test_boxes_masks_and_labels_are_the_pasted_digits(sources, index):
  digits, labels, _ = sources
  scene = _scene(sources, index)
  count = len(scene["boxes"])
  assert count >= 1 and scene["masks"].shape == (count, 96, 96)
  np.testing.assert_array_equal(scene["category_ids"], labels[scene["digit_indices"]] + 1)
  for box, mask, alpha, digit, (top, left, side) in zip(
      scene["boxes"], scene["masks"], scene["alphas"], scene["digit_indices"], scene["squares"]):
    np.testing.assert_array_equal(mask, alpha >= digits_sets.INK_THRESHOLD)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    np.testing.assert_array_equal(box, [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
    # The ink, shrunk back to 8x8 over its pasted square, is the source digit.
    square = alpha[top:top + side, left:left + side]
    assert alpha.sum() == pytest.approx(square.sum())  # no ink outside its square
    small = np.asarray(Image.fromarray((square * 255).astype(np.uint8)).resize(
        (8, 8), Image.BOX), np.float32)
    assert np.corrcoef(small.ravel(), digits[digit].ravel())[0, 1] > 0.95
    # Ink pixels changed the photo; the photo is untouched away from every digit.
    change = np.abs(scene["image"].astype(int) - scene["background"].astype(int)).sum(-1)
    assert np.median(change[mask.astype(bool)]) > 60
  assert not scene["masks"].sum(0).max() > 1  # pasted digits never overlap
  untouched = scene["alphas"].sum(0) == 0
  np.testing.assert_array_equal(scene["image"][untouched], scene["background"][untouched])


def test_written_records_decode_to_the_annotations(written):
  scenes = written["scenes"]
  with open(os.path.join(scenes, "val_annotations.json")) as f:
    coco = json.load(f)
  with open(os.path.join(scenes, "label_map.json")) as f:
    assert json.load(f) == {str(d + 1): str(d) for d in range(10)}
  rows = {}
  for row in coco["annotations"]:
    rows.setdefault(row["image_id"], []).append(row)
  seen = 0
  for path in sorted(glob.glob(os.path.join(scenes, "val-*.tfrecord"))):
    for record in tf.data.TFRecordDataset(path):
      example, extras = decode_example(record), decode_extras(record)
      semantic = decode_segmentation_example(record)["labels"].numpy()
      image_rows = rows[int(example["source_id"].numpy())]
      np.testing.assert_allclose(
          example["boxes"].numpy(),
          [[r["bbox"][1], r["bbox"][0], r["bbox"][1] + r["bbox"][3], r["bbox"][0] + r["bbox"][2]]
           for r in image_rows], atol=1e-3)
      classes = example["classes"].numpy()
      np.testing.assert_array_equal(classes, [r["category_id"] for r in image_rows])
      masks = extras["masks"].numpy()
      assert masks.shape[0] == len(classes)
      expected = np.zeros_like(semantic)
      for mask, category in zip(masks, classes):
        expected[mask > 0] = category
      np.testing.assert_array_equal(semantic, expected)
      seen += 1
  assert seen == len(coco["images"]) == 3


def test_classification_folders_and_records_agree(written):
  cls_dir = written["classification"]
  folder = os.path.join(cls_dir, "images", "train")
  assert sorted(os.listdir(folder)) == [str(d) for d in range(10)]
  assert all(len(os.listdir(os.path.join(folder, d))) == 4 for d in os.listdir(folder))
  labels = [int(decode_record(r)["label"]) for p in sorted(glob.glob(
      os.path.join(cls_dir, "val-*.tfrecord"))) for r in tf.data.TFRecordDataset(p)]
  assert sorted(labels) == list(range(10))  # one held-out digit of each class (5 x 0.2)


def test_the_same_flags_give_the_same_bytes(written, tmp_path):
  again = digits_sets.make_sets(str(tmp_path), seed=3, limit_per_class=5, num_train_scenes=6,
                                num_val_scenes=3, scene_size=64, max_digits=3, num_shards=2)
  names = sorted(os.path.relpath(p, written["dir"]) for p in glob.glob(
      os.path.join(written["dir"], "**", "*.*"), recursive=True))
  assert len(names) > 40
  for name in names:
    with open(os.path.join(written["dir"], name), "rb") as a, \
        open(os.path.join(str(tmp_path), name), "rb") as b:
      assert a.read() == b.read(), name
  assert again["train_objects"] == written["train_objects"]
