"""Instance masks through the detection input (detlab/data/instance_masks.py).

- targets from COCO polygons, compressed RLE and a crowd's uncompressed RLE, written by
  create_coco_tfrecord --include_masks, equal pycocotools' annToMask crops;
- an asymmetric mask through flip + scale jitter + crop, and through Mosaic (one object cut
  by its quadrant), stays on the image's own pixels of the object: the targets are compared
  with the parser's output image sampled at the same cells (the image went through the
  resize, the targets through instance_masks' map: two independent paths);
- masks off: the parser's outputs are those of the plain detection parser; the broken
  settings and records are named.
"""
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from detlab.backbones.conventions import IMAGENET_MEAN_STD
from detlab.data.detection_input import (DetectionParser, GeometricDraws, InputConfig,
                                         make_dataset, source_dataset)
from detlab.data.instance_masks import InstanceMaskConfig, decode_example_with_masks
from detlab.data.mosaic import Mosaic, mosaic, mosaic_dataset
from detlab.data.tf_example import build_example, decode_example, encode_png
from detlab.detection.anchors import AnchorConfig

SIZE = 64
ANCHORS = AnchorConfig(image_size=SIZE, min_level=3, max_level=5)


def _l_shape(height, width, y, x, h, w) -> np.ndarray:
  """A 0/1 L: the box's left column band and bottom row band (asymmetric both ways)."""
  mask = np.zeros([height, width], np.uint8)
  mask[y:y + h, x:x + w // 3] = 1
  mask[y + h - h // 3:y + h, x:x + w] = 1
  return mask


COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.float32)


def _record(masks, category_ids=None, source_id="7", masks_in_record=True,
            colours=None) -> bytes:
  """Objects (mask k painted in colours[k], default COLOURS[k]) on black; boxes = the
  masks' tight boxes."""
  masks = np.asarray(masks, np.uint8)
  height, width = masks.shape[1:]
  image = np.zeros([height, width, 3], np.uint8)
  boxes = []
  for k, mask in enumerate(masks):
    image[mask > 0] = COLOURS[k] if colours is None else colours[k]
    ys, xs = np.nonzero(mask)
    boxes.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
  ids = category_ids or [1] * len(masks)
  return build_example(encoded_image=encode_png(image), image_format="png",
                       source_id=source_id, height=height, width=width, boxes_yxyx=boxes,
                       category_ids=ids, category_names=["a"] * len(ids),
                       masks=masks if masks_in_record else None).SerializeToString()


def _config(**kwargs):
  masks = InstanceMaskConfig(size=kwargs.pop("mask_size", 16))
  return InputConfig(is_training=True, instance_masks=masks, **kwargs)


def _forced(parser, flip, scale, crop):
  class Forced(parser.__class__):
    def draw_geometry(self, seed=None):
      return GeometricDraws(tf.constant(flip), tf.constant(scale, tf.float32),
                            tf.constant(crop, tf.float32))
  parser.__class__ = Forced
  return parser


def _image_at_cells(bright: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """[K, size, size]: the binary image's pixel under each cell centre of each box."""
  side = bright.shape[0]
  out = []
  for y1, x1, y2, x2 in boxes:
    ys = np.floor(y1 + (np.arange(size) + 0.5) * (y2 - y1) / size).astype(int)
    xs = np.floor(x1 + (np.arange(size) + 0.5) * (x2 - x1) / size).astype(int)
    out.append(bright[np.clip(ys, 0, side - 1)][:, np.clip(xs, 0, side - 1)])
  return np.asarray(out)


def _agreement(out: dict, colours) -> np.ndarray:
  """Per kept instance k (painted colours[k]): the fraction of its cells where target > 0.5
  and the output image's pixel being nearest to colours[k] agree; and both [K, M, M]."""
  count = int((out["mask_classes"].numpy() >= 0).sum())
  boxes = out["mask_boxes"].numpy()[:count]
  pixels = IMAGENET_MEAN_STD.to_uint8(out["images"]).astype(np.float32)
  others = np.concatenate([np.asarray(colours, np.float32),
                           [[0, 0, 0], IMAGENET_MEAN_STD.mean_pixel]])
  nearest = np.argmin(((pixels[:, :, None] - others) ** 2).sum(-1), -1)
  size = out["mask_targets"].shape[-1]
  image = np.stack([_image_at_cells(nearest == k, boxes[k:k + 1], size)[0]
                    for k in range(count)])
  targets = out["mask_targets"].numpy()[:count] > 0.5
  return (image == targets).mean(axis=(1, 2)), image, targets


def test_targets_from_polygon_and_rle_equal_pycocotools_ann_to_mask(tmp_path):
  from data_tools import create_coco_tfrecord
  height, width, m = 64, 60, 16
  ring = np.zeros([height, width], np.uint8)
  ring[40:56, 40:56] = 1
  ring[44:52, 44:52] = 0
  crowd = np.zeros([height, width], np.uint8)
  crowd[2:18, 30:46] = np.triu(np.ones([16, 16], np.uint8))
  flat = crowd.flatten(order="F")
  changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
  uncompressed = {"size": [height, width], "counts": np.diff(np.concatenate([[0], changes]))
                  .tolist()}
  compressed = mask_util.encode(np.asfortranarray(ring))
  compressed["counts"] = compressed["counts"].decode()
  anns = [
      {"id": 1, "image_id": 5, "category_id": 1, "bbox": [4, 4, 16, 16], "iscrowd": 0,
       "area": 120.0,  # a triangle polygon at a 16 x 16 integer box
       "segmentation": [[4, 4, 20, 4, 4, 20]]},
      {"id": 2, "image_id": 5, "category_id": 2, "bbox": [4, 30, 16, 16], "iscrowd": 0,
       "area": 100.0, "segmentation": [[4, 30, 9, 30, 9, 41, 20, 41, 20, 46, 4, 46]]},
      {"id": 3, "image_id": 5, "category_id": 2, "bbox": [40, 40, 16, 16], "iscrowd": 0,
       "area": float(ring.sum()), "segmentation": compressed},
      {"id": 4, "image_id": 5, "category_id": 1, "bbox": [30, 2, 16, 16], "iscrowd": 1,
       "area": float(crowd.sum()), "segmentation": uncompressed},
  ]
  coco = {"images": [{"id": 5, "file_name": "a.png", "height": height, "width": width}],
          "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
  (tmp_path / "img").mkdir()
  Image.fromarray(np.full([height, width, 3], 90, np.uint8)).save(tmp_path / "img" / "a.png")
  (tmp_path / "coco.json").write_text(json.dumps(coco))
  status = create_coco_tfrecord.convert(str(tmp_path / "img"), str(tmp_path / "coco.json"),
                                        str(tmp_path / "out" / "t"), num_shards=1,
                                        include_masks=True, stream=open("/dev/null", "w"))
  assert status == 0
  record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "t-00000-of-00001.tfrecord"))))
  parser = _forced(DetectionParser(_config(flip=False, skip_crowd_during_training=False,
                                           mask_size=m), ANCHORS, 2), False, 1.0, [0.0, 0.0])
  out = parser(record, tf.constant([1, 2], tf.int64))
  api = COCO(str(tmp_path / "coco.json"))
  expected = []
  for ann in anns:
    x, y, w, h = ann["bbox"]
    expected.append(api.annToMask(ann)[y:y + h, x:x + w])
  np.testing.assert_allclose(out["mask_targets"].numpy()[:4], np.asarray(expected, np.float32),
                             atol=1e-4)
  np.testing.assert_array_equal(out["mask_classes"].numpy()[:5], [0, 1, 1, 0, -1])
  assert expected[3].sum() == crowd.sum() and expected[2].sum() == ring.sum()


def test_an_asymmetric_mask_follows_flip_scale_jitter_and_crop():
  masks = [_l_shape(80, 96, 12, 58, 32, 28), _l_shape(80, 96, 50, 6, 24, 40)[::-1].copy()]
  record = tf.constant(_record(masks))
  parser = DetectionParser(_config(aug_scale_min=0.5, aug_scale_max=2.0), ANCHORS, 4)
  out = _forced(parser, True, 1.6, [0.8, 0.3])(record, tf.constant([1, 2], tf.int64))
  # Where the draws put the first L's box (detection test_joint_input's arithmetic).
  y1, x1, y2, x2 = 12, 58, 44, 86
  x1, x2 = 96 - x2, 96 - x1
  scale = min(round(1.6 * SIZE) / 80, round(1.6 * SIZE) / 96)
  offset = np.floor((np.round(np.array([80, 96]) * scale) - SIZE) * [0.8, 0.3])
  expected = np.clip([y1 * scale - offset[0], x1 * scale - offset[1], y2 * scale - offset[0],
                      x2 * scale - offset[1]], 0, SIZE)
  np.testing.assert_allclose(out["mask_boxes"].numpy()[0], expected, atol=1e-3)
  agreement, image, targets = _agreement(out, COLOURS[:2])
  assert len(agreement) == 2 and agreement.min() >= 0.98, agreement
  # The check can tell: the L mirrored in its box (a flip the mask missed) disagrees.
  assert (image[0] == targets[0][:, ::-1]).mean() < 0.8


def test_masks_follow_mosaic_and_the_cut_at_its_canvas_edge():
  """Four one-object tiles (tile k painted COLOURS[k]) in a 96 x 96 mosaic, put unscaled
  (jitter scale 0.75 of 128) into a 128 x 128 output, so pixels are copied, not resampled,
  and target cells > 0.5 must match the image's pixels exactly (up to ties). Tiles 1 and 3
  run past the canvas's right edge, which lies inside the output: jittered RoIs reach past
  it into the padding, where the target must be 0 though the source mask goes on (with the
  windows left out, agreement drops to 0.91-0.97 on these seeds)."""
  size = 128
  anchors = AnchorConfig(image_size=size, min_level=3, max_level=5)
  tiles = [_l_shape(48, 48, 6, 6, 34, 30), _l_shape(48, 40, 12, 8, 32, 30),
           _l_shape(40, 48, 4, 10, 32, 30)[:, ::-1].copy(), _l_shape(48, 48, 6, 6, 38, 38)]
  examples = [decode_example_with_masks(tf.constant(_record([m], source_id=str(k + 1),
                                                            colours=COLOURS[k:k + 1])))
              for k, m in enumerate(tiles)]
  canvas = mosaic(examples, 48, centre=(40, 70))
  np.testing.assert_array_equal(canvas["mask_window"].numpy()[[1, 3], 3], [96, 96])
  config = InputConfig(is_training=True, instance_masks=InstanceMaskConfig(16, box_jitter=0.2))
  parser = _forced(DetectionParser(config, anchors, 4), False, 0.75, [0.0, 0.0])
  crossing = 0
  for seed in range(4):
    out = parser.parse(canvas, tf.constant([3, seed], tf.int64))
    agreement, _, _ = _agreement(out, COLOURS)
    assert len(agreement) == 4 and agreement.min() >= 0.99, (seed, agreement)
    crossing += int((out["mask_boxes"].numpy()[[1, 3], 3] > 96).sum())
  assert crossing >= 2  # RoIs did reach past the canvas edge


def test_masks_off_leave_the_parser_outputs_unchanged_and_eval_carries_gt_masks():
  masks = [_l_shape(40, 48, 4, 4, 20, 20), _l_shape(40, 48, 10, 26, 24, 20)]
  record = tf.constant(_record(masks))
  seed = tf.constant([5, 6], tf.int64)
  plain = DetectionParser(InputConfig(is_training=True, aug_scale_min=0.5, aug_scale_max=2.0),
                          ANCHORS, 4)(record, seed)
  with_masks = DetectionParser(_config(aug_scale_min=0.5, aug_scale_max=2.0), ANCHORS, 4)(
      record, seed)
  assert set(with_masks) - set(plain) == {"mask_boxes", "mask_classes", "mask_targets"}
  for key, value in plain.items():
    np.testing.assert_array_equal(value.numpy(), with_masks[key].numpy())
  evaluation = InputConfig(instance_masks=InstanceMaskConfig())
  out = DetectionParser(evaluation, ANCHORS, 4)(record)
  np.testing.assert_array_equal(out["gt_masks"].numpy(), np.asarray(masks))
  assert "gt_masks" not in DetectionParser(InputConfig(), ANCHORS, 4)(record)


def test_batched_training_and_eval_datasets_with_masks(tmp_path):
  path = str(tmp_path / "m.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(_record([_l_shape(40, 48, 4, 4, 20, 20)], source_id="1"))
    writer.write(_record([_l_shape(32, 40, 4, 4, 20, 20), _l_shape(32, 40, 2, 20, 20, 18)],
                         source_id="2"))
    writer.write(build_example(  # an image of no object: no mask either
        encoded_image=encode_png(np.zeros([24, 30, 3], np.uint8)), image_format="png",
        source_id="3", height=24, width=30, boxes_yxyx=np.zeros([0, 4]), category_ids=[],
        category_names=[], masks=np.zeros([0, 24, 30], np.uint8)).SerializeToString())
  # Training's Mosaic stream: masks of differently sized images (one without objects)
  # through mosaic_dataset's padded groups of 4, then the parser.
  config = _config(file_pattern=path, max_instances=3, shuffle_buffer=2, mosaic=Mosaic(1.0))
  stream = mosaic_dataset(lambda s: source_dataset(config, seed=s, decoded=True),
                          config.mosaic, SIZE // 2, seed=1)
  canvas = next(iter(stream))
  assert canvas["masks"].shape[0] == canvas["boxes"].shape[0] == canvas["mask_window"].shape[0]
  out = DetectionParser(config, ANCHORS, 4).parse(canvas, tf.constant([1, 2], tf.int64))
  assert out["mask_targets"].shape == (3, 16, 16) and out["mask_boxes"].shape == (3, 4)
  valid = out["mask_classes"].numpy() >= 0
  assert valid.sum() >= 1 and (out["mask_targets"].numpy()[valid].max(axis=(1, 2)) > 0.5).all()
  evaluation = make_dataset(InputConfig(file_pattern=path, instance_masks=InstanceMaskConfig()),
                            ANCHORS, 4, 2)
  batch, last = list(evaluation)
  assert batch["gt_masks"].shape == (2, 2, 40, 48)
  assert batch["gt_masks"].numpy()[1, :, :32, :40].sum() > 0
  assert last["gt_masks"].shape == (1, 0, 24, 30) and last["gt_count"].numpy().tolist() == [0]


def test_broken_settings_and_records_are_named():
  from detlab.data.augment import AutoAugment
  with pytest.raises(ValueError, match="InputConfig.augmentations"):
    _config(augmentations=[AutoAugment()])
  with pytest.raises(ValueError, match="tfds_name"):
    _config(tfds_name="coco/2017")
  record = tf.constant(_record([_l_shape(40, 48, 4, 4, 20, 20)], masks_in_record=False))
  with pytest.raises(tf.errors.InvalidArgumentError, match="--include_masks"):
    DetectionParser(_config(), ANCHORS, 4)(record)
