"""TFDS builders with semantic segmentation masks, as decoded {"image", "labels", "source_id"}.

TFDS has no Pascal VOC segmentation masks (its `voc` builders hold boxes only); the builders
with per-pixel labels and how their values map to detlab's class ids (255 = ignore):
- `oxford_iiit_pet`: 'segmentation_mask' trimap 1 = pet, 2 = background, 3 = border ->
  pet 1, background 0, border ignored (2 classes).
- `scene_parse150` (ADE20K SceneParsing): 'annotation' 0 = "other" (unlabelled), 1..150 the
  classes -> 0 ignored, c -> c - 1 (150 classes; the benchmark's convention).
- `cityscapes/semantic_segmentation` (manual download): 'segmentation_label' holds the
  gtFine labelIds -> the 19 evaluation trainIds (cityscapesScripts' labels.py), others ignored.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from detlab.data.segmentation_example import IGNORE_LABEL
from detlab.data.tfds_source import TFDS_HINT, encoded_split


@dataclasses.dataclass(frozen=True)
class TfdsSegmentationSpec:
  image_key: str
  mask_key: str
  mapping: dict  # raw value -> class id; unlisted values -> IGNORE_LABEL
  num_classes: int
  source_key: str | None = None

  def lookup(self) -> np.ndarray:
    table = np.full(256, IGNORE_LABEL, np.uint8)
    for raw, label in self.mapping.items():
      table[raw] = label
    return table


_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                         23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

SPECS = {
    "oxford_iiit_pet": TfdsSegmentationSpec("image", "segmentation_mask", {1: 1, 2: 0}, 2,
                                            "file_name"),
    "scene_parse150": TfdsSegmentationSpec("image", "annotation",
                                           {c: c - 1 for c in range(1, 151)}, 150),
    "cityscapes/semantic_segmentation": TfdsSegmentationSpec(
        "image_left", "segmentation_label", _CITYSCAPES_TRAIN_IDS, 19, "image_id"),
}


def spec_for(name: str) -> TfdsSegmentationSpec:
  """The spec of builder `name` ('oxford_iiit_pet' or 'oxford_iiit_pet:4.*.*' alike)."""
  base = name.split(":")[0]
  if base not in SPECS:
    raise ValueError(f"TFDS builder {name!r} has no known segmentation masks; detlab reads "
                     f"{sorted(SPECS)} (or convert your data with "
                     "data_tools.create_segmentation_tfrecord).")
  return SPECS[base]


def to_decoded(example: dict, spec: TfdsSegmentationSpec) -> dict:
  image = tf.cast(example[spec.image_key], tf.uint8)
  if image.shape.rank == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  raw = tf.cast(example[spec.mask_key], tf.uint8)
  if raw.shape.rank == 3:
    raw = raw[:, :, 0]  # scene_parse150 stores its single-channel ids as RGB
  labels = tf.gather(tf.constant(spec.lookup()), tf.cast(raw, tf.int32))
  source_id = (tf.strings.as_string(example[spec.source_key])
               if spec.source_key and example[spec.source_key].dtype != tf.string
               else example[spec.source_key] if spec.source_key else tf.constant(""))
  return {"image": tf.ensure_shape(image, [None, None, 3]), "labels": labels,
          "source_id": source_id}


def encoded_dataset(name: str, split: str, data_dir: str | None = None,
                    download: bool = False, is_training: bool = False,
                    input_context: tf.distribute.InputContext | None = None,
                    seed: int | None = None):
  """(dataset, decode) of the split: encoded examples (tfds_source.encoded_split: read
  through the corrupt-record guard where stored as TFRecords) and the function to the
  decoded {"image", "labels", "source_id"} (`to_decoded`). Shuffle, then map `decode`."""
  import tensorflow_datasets as tfds  # imported lazily: only TFDS runs need it
  spec = spec_for(name)
  builder = tfds.builder(name, data_dir=data_dir)
  if download:
    builder.download_and_prepare()
  hint = TFDS_HINT.format(name=name, split=split, data_dir=data_dir or "~/tensorflow_datasets")
  dataset, decode = encoded_split(builder, split, is_training, input_context, seed, hint)
  return dataset, lambda element: to_decoded(decode(element), spec)


def decoded_dataset(name: str, split: str, data_dir: str | None = None,
                    download: bool = False, is_training: bool = False,
                    input_context: tf.distribute.InputContext | None = None,
                    seed: int | None = None) -> tf.data.Dataset:
  """The split as decoded dicts; files shuffled in training; sharded across pipelines."""
  dataset, decode = encoded_dataset(name, split, data_dir, download, is_training,
                                    input_context, seed)
  return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=not is_training or seed is not None)
