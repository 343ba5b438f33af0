"""The semantic segmentation tf.train.Example layout, written and read.

Keys as TF Model Garden's segmentation decoder (official/vision/dataloaders) expects:
`image/encoded`, `image/format`, `image/height`, `image/width`, `image/source_id`,
`image/filename` and `image/segmentation/class/encoded` (a single-channel 8-bit PNG of class
ids, 255 = ignore) with `image/segmentation/class/format` = 'png'. A detection record may carry
the segmentation key too (the built-in shapes set with --semantic_maps), so one file serves
detection, segmentation and the joint model.
"""
import numpy as np
import tensorflow as tf

from detlab.data.tf_example import encode_png

IGNORE_LABEL = 255
MASK_KEY = "image/segmentation/class/encoded"


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def mask_features(label_map: np.ndarray) -> dict:
  """{key: Feature} for a [H, W] uint8 class-id map (added to any image Example)."""
  label_map = np.asarray(label_map)
  if label_map.ndim != 2 or label_map.dtype != np.uint8:
    raise ValueError(f"a label map must be a [H, W] uint8 array, got {label_map.dtype} "
                     f"{list(label_map.shape)}.")
  return {MASK_KEY: _bytes(encode_png(label_map)),
          "image/segmentation/class/format": _bytes(b"png")}


def build_segmentation_example(*, encoded_image: bytes, image_format: str, source_id: str,
                               height: int, width: int, label_map: np.ndarray,
                               filename: str = "") -> tf.train.Example:
  feature = {"image/encoded": _bytes(encoded_image),
             "image/format": _bytes(image_format.encode()),
             "image/source_id": _bytes(source_id.encode()),
             "image/filename": _bytes(filename.encode()),
             "image/height": _int(height), "image/width": _int(width),
             **mask_features(label_map)}
  return tf.train.Example(features=tf.train.Features(feature=feature))


def semantic_map(masks: np.ndarray, category_ids, height: int, width: int,
                 crowd=None) -> np.ndarray:
  """Instance masks [M, H, W] 0/1 -> a class map (0 = background). Where instances overlap
  the later one wins (COCO order); crowd instances are painted IGNORE_LABEL."""
  out = np.zeros([height, width], np.uint8)
  crowd = [False] * len(category_ids) if crowd is None else crowd
  for mask, category, is_crowd in zip(masks, category_ids, crowd):
    if not is_crowd and not 0 < int(category) < IGNORE_LABEL:
      raise ValueError(f"category id {category} does not fit a uint8 label map (1..254).")
    out[np.asarray(mask).astype(bool)] = IGNORE_LABEL if is_crowd else int(category)
  return out


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/source_id": tf.io.FixedLenFeature((), tf.string, default_value=""),
    MASK_KEY: tf.io.FixedLenFeature((), tf.string),
}


def decode_segmentation_example(serialized: tf.Tensor) -> dict:
  """-> {"image" uint8 [H, W, 3], "labels" uint8 [H, W], "source_id" string}."""
  parsed = tf.io.parse_single_example(serialized, _FEATURES)
  image = tf.io.decode_image(parsed["image/encoded"], channels=3, expand_animations=False)
  labels = tf.io.decode_png(parsed[MASK_KEY], channels=1, dtype=tf.uint8)[:, :, 0]
  tf.debugging.assert_equal(tf.shape(image)[:2], tf.shape(labels),
                            message="segmentation record: mask size differs from the image "
                                    "size; rewrite it with create_segmentation_tfrecord")
  return {"image": image, "labels": labels, "source_id": parsed["image/source_id"]}
