"""The detection tf.train.Example layout (TF Object Detection API keys), written and read.

Boxes are stored normalized to [0, 1] (OD-API convention); class/label holds the dataset's
category id (not assumed contiguous).
"""
import io

import numpy as np
import tensorflow as tf
from PIL import Image


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def build_example(*, encoded_image: bytes, image_format: str, source_id: str, height: int,
                  width: int, boxes_yxyx: np.ndarray, category_ids, category_names,
                  is_crowd=None, areas=None, masks=None, filename: str = "",
                  difficult=None) -> tf.train.Example:
  """boxes_yxyx: [M, 4] pixels of the original image; masks: optional [M, H, W] uint8 0/1
  (stored as PNGs); difficult: optional [M] 0/1 (Pascal VOC's flag)."""
  boxes = np.asarray(boxes_yxyx, np.float32).reshape(-1, 4)
  count = len(boxes)
  feature = {
      "image/encoded": _bytes([encoded_image]),
      "image/format": _bytes([image_format.encode()]),
      "image/source_id": _bytes([source_id.encode()]),
      "image/filename": _bytes([filename.encode()]),
      "image/height": _ints([height]),
      "image/width": _ints([width]),
      "image/object/bbox/ymin": _floats(boxes[:, 0] / height),
      "image/object/bbox/xmin": _floats(boxes[:, 1] / width),
      "image/object/bbox/ymax": _floats(boxes[:, 2] / height),
      "image/object/bbox/xmax": _floats(boxes[:, 3] / width),
      "image/object/class/label": _ints(list(category_ids)),
      "image/object/class/text": _bytes([n.encode() for n in category_names]),
      "image/object/is_crowd": _ints(list(is_crowd) if is_crowd is not None else [0] * count),
      "image/object/area": _floats(list(areas) if areas is not None else
                                   list((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))),
  }
  if masks is not None:
    feature["image/object/mask"] = _bytes([encode_png(m.astype(np.uint8)) for m in masks])
  if difficult is not None:
    feature["image/object/difficult"] = _ints([int(d) for d in difficult])
  return tf.train.Example(features=tf.train.Features(feature=feature))


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/source_id": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
}


def decode_example(serialized: tf.Tensor) -> dict:
  """Parses one serialized Example (graph-friendly).

  Returns {"image" uint8 [H, W, 3], "source_id" string, "height", "width" int32,
  "boxes" [M, 4] float32 [y1, x1, y2, x2] original-image pixels, "classes" [M] int32 category
  ids, "is_crowd" [M] bool, "areas" [M] float32}.
  """
  parsed = tf.io.parse_single_example(serialized, _FEATURES)
  dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
           for k, v in parsed.items()}
  image = tf.io.decode_image(dense["image/encoded"], channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
  boxes = tf.stack([dense["image/object/bbox/ymin"], dense["image/object/bbox/xmin"],
                    dense["image/object/bbox/ymax"], dense["image/object/bbox/xmax"]], -1)
  classes = tf.cast(dense["image/object/class/label"], tf.int32)
  count = tf.shape(classes)[0]
  is_crowd = dense["image/object/is_crowd"]
  is_crowd = tf.cond(tf.shape(is_crowd)[0] > 0, lambda: is_crowd > 0,
                     lambda: tf.zeros([count], tf.bool))
  pixel_boxes = boxes * size
  areas = dense["image/object/area"]
  areas = tf.cond(tf.shape(areas)[0] > 0, lambda: areas,
                  lambda: (pixel_boxes[:, 2] - pixel_boxes[:, 0]) *
                  (pixel_boxes[:, 3] - pixel_boxes[:, 1]))
  return {"image": image, "source_id": dense["image/source_id"], "height": height,
          "width": width, "boxes": pixel_boxes, "classes": classes, "is_crowd": is_crowd,
          "areas": areas}


_EXTRA_FEATURES = {
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
}


def decode_extras(serialized: tf.Tensor) -> dict:
  """The keys decode_example leaves out (for tools and tests, not the training pipeline).

  Returns {"filename" string, "class_text" [M] string, "difficult" [M] int32 (empty if the
  record has none), "masks" [K, H, W] uint8 0/1 (K = 0 if the record has no masks)}.
  """
  parsed = tf.io.parse_single_example(serialized, {**_FEATURES, **_EXTRA_FEATURES})
  dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
           for k, v in parsed.items()}
  size = tf.maximum(tf.cast(tf.stack([dense["image/height"], dense["image/width"]]), tf.int32), 0)
  pngs = dense["image/object/mask"]
  masks = tf.cond(
      tf.size(pngs) > 0,
      lambda: tf.map_fn(lambda png: tf.io.decode_png(png, channels=1)[:, :, 0], pngs,
                        fn_output_signature=tf.TensorSpec([None, None], tf.uint8)),
      lambda: tf.zeros(tf.concat([[0], size], 0), tf.uint8))
  return {"filename": dense["image/filename"], "class_text": dense["image/object/class/text"],
          "difficult": tf.cast(dense["image/object/difficult"], tf.int32), "masks": masks}
