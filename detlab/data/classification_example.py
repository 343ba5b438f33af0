"""The ImageNet-layout tf.train.Example of a classification record (writer and keys).

Keys as TF's ImageNet TFRecords (tensorflow/models `build_imagenet_data` / tfm's
classification decoder): image/encoded, image/format, image/class/label, image/class/text,
image/filename, image/height, image/width. detlab writes labels 0..K-1 (its label map's
indices); TF's own ImageNet records are 1-based (0 = background), which the input pipeline's
`label_offset=-1` handles. The label map (class names by index) is detlab.data.label_map's.
"""
import tensorflow as tf

ENCODED, LABEL, TEXT = "image/encoded", "image/class/label", "image/class/text"


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def build_classification_example(encoded: bytes, label: int, class_name: str, height: int,
                                 width: int, image_format: str = "jpeg",
                                 filename: str = "") -> tf.train.Example:
  """One record; `encoded` is a JPEG/PNG file's bytes, `label` its class index."""
  return tf.train.Example(features=tf.train.Features(feature={
      ENCODED: _bytes(encoded), "image/format": _bytes(image_format.encode()),
      LABEL: _int(label), TEXT: _bytes(class_name.encode()),
      "image/filename": _bytes(filename.encode()), "image/height": _int(height),
      "image/width": _int(width)}))

