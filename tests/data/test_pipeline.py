"""The built-in data set through the TFRecord input path: round trip, transforms, errors."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from detlab.data import builtin_shapes
from detlab.data.detection_input import DetectionParser, InputConfig, make_dataset
from detlab.data.source_id import decode_source_ids
from detlab.data.tf_example import decode_example
from detlab.detection.anchors import AnchorConfig


def _records(pattern):
  files = sorted(tf.io.gfile.glob(pattern))
  return [r for r in tf.data.TFRecordDataset(files)]


def test_rendering_is_deterministic_and_annotations_are_visible_extents():
  a, b = builtin_shapes.render_scene(3, 7), builtin_shapes.render_scene(3, 7)
  np.testing.assert_array_equal(a["image"], b["image"])
  for box, mask, area in zip(a["boxes"], a["masks"], a["areas"]):
    ys, xs = np.nonzero(mask)
    np.testing.assert_array_equal(box, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    assert area == mask.sum()
  assert set(a["category_ids"]) <= set(builtin_shapes.CATEGORIES)


def test_records_round_trip_box_for_box(shapes_dir):
  records = _records(os.path.join(shapes_dir, "val-*"))
  assert len(records) == 8
  with open(os.path.join(shapes_dir, "val_annotations.json")) as f:
    coco = json.load(f)
  by_image = {}
  for ann in coco["annotations"]:
    by_image.setdefault(ann["image_id"], []).append(ann)
  for record in records:
    data = decode_example(record)
    image_id = int(data["source_id"].numpy())
    scene = builtin_shapes.render_scene(1, image_id - 1_000_000)  # val uses seed + 1
    np.testing.assert_allclose(data["boxes"].numpy(), scene["boxes"], atol=1e-3)
    np.testing.assert_array_equal(data["classes"].numpy(), scene["category_ids"])
    assert data["image"].shape[:2] == scene["image"].shape[:2]
    xywh = [a["bbox"] for a in by_image.get(image_id, [])]
    yxyx = [[y, x, y + h, x + w] for x, y, w, h in xywh]
    np.testing.assert_allclose(np.reshape(yxyx, (-1, 4)), scene["boxes"], atol=1e-3)


def test_train_batches_have_static_shapes_and_targets(shapes_dir):
  anchors = AnchorConfig(image_size=128)
  config = InputConfig(os.path.join(shapes_dir, "train-*"), is_training=True,
                       aug_scale_min=0.5, aug_scale_max=1.5)
  batch = next(iter(make_dataset(config, anchors, num_classes=4, batch_size=4, seed=1)))
  assert batch["images"].shape == (4, 128, 128, 3)
  assert batch["cls_targets"].shape == (4, anchors.num_anchors)
  assert batch["box_targets"].shape == (4, anchors.num_anchors, 4)
  cls = batch["cls_targets"].numpy()
  assert cls.min() >= -1 and cls.max() <= 3 and (cls >= 0).sum() > 0


def test_train_batches_hold_no_strings_and_their_id_codes_name_the_images(shapes_dir):
  """Everything in a training batch can go to a TPU (float32/int32); the source ids come
  back from their byte codes as the records' own ids."""
  anchors = AnchorConfig(image_size=128)
  config = InputConfig(os.path.join(shapes_dir, "train-*"), is_training=True)
  batch = next(iter(make_dataset(config, anchors, num_classes=4, batch_size=4, seed=1)))
  assert {v.dtype for v in batch.values()} <= {tf.float32, tf.int32}, \
      {k: v.dtype for k, v in batch.items()}
  known = {decode_example(r)["source_id"].numpy().decode()
           for r in _records(os.path.join(shapes_dir, "train-*"))}
  ids = decode_source_ids(batch["source_ids"].numpy())
  assert len(ids) == 4 and set(ids) <= known, (ids, sorted(known)[:5])


def test_eval_form_keeps_original_pixels_and_scale(shapes_dir):
  anchors = AnchorConfig(image_size=128)
  parser = DetectionParser(InputConfig("unused", is_training=False, max_instances=10),
                           anchors, num_classes=4)
  record = _records(os.path.join(shapes_dir, "val-*"))[0]
  out = parser(record)
  raw = decode_example(record)
  height, width = raw["image"].shape[:2]
  info = out["image_info"].numpy()
  np.testing.assert_allclose(info[0], [height, width])
  scale = min(128 / height, 128 / width)
  np.testing.assert_allclose(info[2], [scale, scale], rtol=1e-2)
  count = int(out["gt_count"])
  np.testing.assert_allclose(out["gt_boxes"][:count], raw["boxes"], atol=1e-4)
  # Every box is kept, unpadded (make_dataset pads each eval batch to its largest count).
  assert count == len(raw["boxes"]) and out["gt_boxes"].shape == (count, 4)
  np.testing.assert_array_equal(out["gt_classes"], raw["classes"] - 1)


def test_horizontal_flip_moves_boxes_with_the_image():
  anchors = AnchorConfig(image_size=128)
  image = np.zeros((128, 128, 3), np.uint8)
  image[20:60, 10:40] = 255  # a white box at x 10..40
  from detlab.data.tf_example import build_example, encode_png
  example = build_example(encoded_image=encode_png(image), image_format="png", source_id="1",
                          height=128, width=128, boxes_yxyx=[[20, 10, 60, 40]],
                          category_ids=[1], category_names=["a"]).SerializeToString()
  config = InputConfig("unused", is_training=True, flip=True)
  parser = DetectionParser(config, anchors, num_classes=1)
  seen_flipped = seen_plain = False
  for seed in range(12):
    tf.random.set_seed(seed)
    out = parser(tf.constant(example))
    # Decode the positive targets back to boxes and compare with where the image is white.
    from detlab.detection.targets import decode_boxes
    positive = out["cls_targets"].numpy() >= 0
    boxes = decode_boxes(out["box_targets"], anchors.boxes()).numpy()[positive]
    x1 = boxes[:, 1].mean()
    white = out["images"].numpy()[..., 0] > 1.0
    cols = np.nonzero(white.any(0))[0]
    np.testing.assert_allclose([x1, boxes[:, 3].mean()], [cols.min(), cols.max() + 1], atol=0.5)
    seen_flipped |= cols.min() > 64
    seen_plain |= cols.min() < 64
  assert seen_flipped and seen_plain


def test_missing_data_names_the_tool_that_creates_it(tmp_path):
  config = InputConfig(str(tmp_path / "nothing-*.tfrecord"), is_training=True)
  with pytest.raises(FileNotFoundError, match="python -m data_tools.make_shapes_dataset"):
    make_dataset(config, AnchorConfig(image_size=128), 4, 2)


def test_category_id_beyond_num_classes_is_a_clear_error(shapes_dir):
  config = InputConfig(os.path.join(shapes_dir, "val-*"), is_training=False)
  dataset = make_dataset(config, AnchorConfig(image_size=128), num_classes=2, batch_size=8)
  with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds num_classes=2"):
    next(iter(dataset))


def test_augmentation_steps_and_mosaic_run_inside_the_training_pipeline(shapes_dir):
  from detlab.data.augment import RandAugment
  from detlab.data.mosaic import Mosaic
  anchors = AnchorConfig(image_size=128)
  config = InputConfig(os.path.join(shapes_dir, "train-*"), is_training=True,
                       aug_scale_min=0.5, aug_scale_max=1.5, shuffle_buffer=8,
                       augmentations=[RandAugment(num_layers=1)], mosaic=Mosaic(prob=0.5))
  batch = next(iter(make_dataset(config, anchors, num_classes=4, batch_size=4, seed=1)))
  assert batch["images"].shape == (4, 128, 128, 3)
  assert batch["cls_targets"].shape == (4, anchors.num_anchors)
  assert (batch["cls_targets"].numpy() >= 0).sum() > 0


def test_training_keeps_the_largest_max_instances_boxes(capfd):
  from detlab.data.tf_example import build_example, encode_png
  boxes = [[4 * i, 0, 4 * i + 3, 3 + i % 7] for i in range(30)]
  example = build_example(
      encoded_image=encode_png(np.zeros((128, 128, 3), np.uint8)), image_format="png",
      source_id="42", height=128, width=128, boxes_yxyx=boxes, category_ids=[1] * 30,
      category_names=["a"] * 30).SerializeToString()
  config = InputConfig("unused", is_training=True, flip=False, max_instances=25)
  DetectionParser(config, AnchorConfig(image_size=128), num_classes=1)(tf.constant(example))
  assert 'image "42" has 30 boxes; kept the 25 largest, dropped 5' in capfd.readouterr().err


def test_jitter_resize_and_crop_without_jitter_equals_tfm():
  from official.vision.ops import preprocess_ops
  from detlab.data.detection_input import jitter_resize_and_crop
  image = tf.random.stateless_uniform([90, 150, 3], [1, 2]) * 255
  ours, our_info = jitter_resize_and_crop(image, 128, tf.constant(1.0),
                                          tf.constant([0.3, 0.7]))
  theirs, their_info = preprocess_ops.resize_and_crop_image(image, [128, 128], [128, 128])
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  np.testing.assert_allclose(our_info, their_info, rtol=1e-6)


def test_boxes_follow_scale_jitter_and_crop():
  """A white box drawn on black: after jitter + crop its targets decode to the white pixels."""
  from detlab.data.tf_example import build_example, encode_png
  from detlab.detection.targets import decode_boxes
  anchors = AnchorConfig(image_size=128)
  image = np.zeros((128, 128, 3), np.uint8)
  image[40:90, 30:100] = 255
  example = build_example(encoded_image=encode_png(image), image_format="png", source_id="1",
                          height=128, width=128, boxes_yxyx=[[40, 30, 90, 100]],
                          category_ids=[1], category_names=["a"]).SerializeToString()
  parser = DetectionParser(InputConfig("unused", is_training=True, flip=False,
                                       aug_scale_min=0.6, aug_scale_max=1.8),
                           anchors, num_classes=1)
  scales = set()
  for seed in range(8):
    out = parser(tf.constant(example), tf.constant([seed, 7], tf.int64))
    positive = out["cls_targets"].numpy() >= 0
    if not positive.any():
      continue  # the box was cropped away
    box = decode_boxes(out["box_targets"], anchors.boxes()).numpy()[positive].mean(0)
    white = out["images"].numpy()[..., 0] > 1.0
    rows, cols = np.nonzero(white.any(1))[0], np.nonzero(white.any(0))[0]
    np.testing.assert_allclose(box, [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1],
                               atol=1.5)
    scales.add(round(float(cols.max() + 1 - cols.min())))
  assert len(scales) > 3  # the jitter did change the scale


AFTER_RESTORE = 16


def test_a_restored_training_iterator_yields_the_same_augmented_batches(shapes_dir, tmp_path):
  """The iterator checkpoint holds the per-example augmentation seeds, so batches after a
  restore equal those of the uninterrupted iterator, flip and scale jitter included.
  (Control, measured: with tfm's stateful flip/jitter ops batches differ after the restore,
  once past the elements already buffered in the saved map/prefetch state.)"""
  anchors = AnchorConfig(image_size=64, max_level=5)
  config = InputConfig(os.path.join(shapes_dir, "train-*"), is_training=True, flip=True,
                       aug_scale_min=0.1, aug_scale_max=2.0, shuffle_buffer=8)
  # As the trainer does: stateful ops (AutoAugment's, if configured) do not block the save.
  options = tf.data.Options()
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  make = lambda: make_dataset(config, anchors, num_classes=4, batch_size=2,
                              seed=3).with_options(options)
  iterator = iter(make())
  for _ in range(3):
    next(iterator)
  path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "it"))
  # Far past what the map and prefetch buffers (saved with the iterator) hold at the save.
  expected = [next(iterator)["images"].numpy() for _ in range(AFTER_RESTORE)]
  restored = iter(make())
  tf.train.Checkpoint(iterator=restored).restore(path)
  got = [next(restored)["images"].numpy() for _ in range(AFTER_RESTORE)]
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)
  # ... and the augmentation is random: a fresh iterator does not start where this one went on.
  assert not np.array_equal(next(iter(make()))["images"].numpy(), expected[0])
