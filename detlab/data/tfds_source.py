"""TFDS detection builders as a source of decoded examples (the decode_example layout).

Any builder with the standard features works: "image", "objects/bbox" (tfds BBoxFeature:
normalized [ymin, xmin, ymax, xmax]) and "objects/label" (ClassLabel, 0-based contiguous),
e.g. `coco/2017` and `voc/2007`. detlab's class index is category id - 1, so a TFDS label
becomes category id = label + 1 and the names come from the builder's ClassLabel feature
(`label_map`). Optional features used when present: "image/id" (source id; else the file
name's stem), "objects/is_crowd" (else VOC's "objects/is_difficult", else none),
"objects/area" (else the box area in pixels).

Note: TFDS COCO labels are the 80 contiguous classes, not COCO's ids 1..90, so a TFDS COCO
run wants NUM_CLASSES = 80 and evaluation against these ids, not instances_val2017.json.

Reading (`encoded_split`, shared by the detection, segmentation and classification inputs):
a prepared split stored as TFRecord files (TFDS' default format) is read by detlab itself,
through record_files, as serialized examples: a truncated or corrupt shard is named, counted
(record_files.SKIPPED) and skipped from its bad record on, like detlab's own records. (TFDS'
own reader stops with DataLossError at the cut or corrupt record, or, where the record reader
stops quietly at a cut, with FailedPreconditionError "Input dataset was expected to contain N
elements but contained only M" at the split's end, every epoch: a crash loop on resume;
`.ignore_errors()` on its dataset does not help, it spins on that error.)
Examples stay encoded until after the training shuffle, so the shuffle buffer and every
input checkpoint hold serialized examples, not decoded images; `decode` runs after it.
Other storage (array_record or parquet files, tfds.testing.mock_data) goes through
builder.as_dataset, decoded and without the guard (a warning says so).
"""
from typing import Callable

from absl import logging
import tensorflow as tf

from detlab.data import label_map as label_maps
from detlab.data import record_files

TFDS_HINT = ("The TFDS data set {name!r} (split {split!r}) is not prepared in data_dir "
             "{data_dir!r}. Prepare it with:\n  tfds build {name} --data_dir={data_dir}\n"
             "or allow the download with InputConfig.tfds_download = True.")


def load_builder(name: str, data_dir: str | None = None):
  """The tfds builder `name` (e.g. 'coco/2017'), checked to have the detection features."""
  import tensorflow_datasets as tfds  # imported lazily: only TFDS runs need it
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  missing = [key for key in ("image", "objects") if key not in features]
  if not missing:
    missing = [f"objects/{key}" for key in ("bbox", "label") if key not in features["objects"]]
  if missing:
    raise ValueError(f"TFDS builder {name!r} lacks the detection features {missing}; "
                     "detlab reads image, objects/bbox (normalized yxyx), objects/label.")
  return builder


def label_map(builder) -> dict[int, str]:
  """{category id: name}, id = TFDS label + 1 (detlab's class index = id - 1)."""
  names = builder.info.features["objects"]["label"].names
  return {i + 1: name for i, name in enumerate(names)}


def write_label_map(builder, path: str) -> dict[int, str]:
  """Writes `label_map(builder)` as the label_map.json that train.label_map_file reads."""
  mapping = label_map(builder)
  label_maps.write_label_map(path, mapping)
  return mapping


def to_decoded(example: dict) -> dict:
  """One TFDS example -> decode_example's dict.

  Returns {"image" uint8 [H, W, 3], "source_id" string, "height", "width" int32,
  "boxes" [M, 4] float32 [y1, x1, y2, x2] pixels, "classes" [M] int32 category ids
  (label + 1), "is_crowd" [M] bool, "areas" [M] float32 pixels}.
  """
  image = example["image"]
  if image.shape.rank == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  image = tf.ensure_shape(tf.cast(image, tf.uint8), [None, None, 3])
  objects = example["objects"]
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
  boxes = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4]) * size
  classes = tf.cast(objects["label"], tf.int32) + 1
  if "is_crowd" in objects:
    is_crowd = tf.cast(objects["is_crowd"], tf.bool)
  elif "is_difficult" in objects:  # VOC: ignored in evaluation, like COCO's crowd
    is_crowd = tf.cast(objects["is_difficult"], tf.bool)
  else:
    is_crowd = tf.zeros_like(classes, tf.bool)
  if "area" in objects:
    areas = tf.cast(objects["area"], tf.float32)
  else:
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  if "image/id" in example:
    source_id = tf.strings.as_string(example["image/id"])
  elif "image/filename" in example:
    source_id = tf.strings.regex_replace(example["image/filename"], r"(.*/)?([^/.]*).*", r"\2")
  else:
    source_id = tf.constant("")
  return {"image": image, "source_id": source_id, "height": height, "width": width,
          "boxes": boxes, "classes": classes, "is_crowd": is_crowd, "areas": areas}


def _tfrecord_instructions(builder, split: str):
  """The split's TFDS file instructions where detlab can read them itself: TFRecord files
  that exist; else None (another format, or nothing on disk)."""
  file_format = getattr(builder.info, "file_format", None)
  if str(getattr(file_format, "value", file_format or "tfrecord")) != "tfrecord":
    return None
  try:
    instructions = builder.info.splits[split].file_instructions
  except (KeyError, ValueError, AssertionError, TypeError, AttributeError):
    return None
  if not instructions or not all(tf.io.gfile.exists(i.filename) for i in instructions):
    return None
  return instructions


def encoded_split(builder, split: str, is_training: bool = False,
                  input_context: tf.distribute.InputContext | None = None,
                  seed: int | None = None, not_prepared_hint: str = ""
                  ) -> tuple[tf.data.Dataset, Callable]:
  """(dataset, decode) of a TFDS split: `dataset` yields what a shuffle buffer should hold
  (serialized examples where detlab reads the TFRecord files itself, see the module
  docstring), `decode(element)` turns one into TFDS' decoded example dict. Files are
  shuffled in training (by `seed`) and sharded across input pipelines. Raises
  FileNotFoundError with `not_prepared_hint` when the split is not prepared."""
  instructions = _tfrecord_instructions(builder, split)
  if instructions is not None:
    dataset = record_files.sharded_records(
        [i.filename for i in instructions], input_context, shuffle=is_training, seed=seed,
        deterministic=not is_training or seed is not None,
        ranges=[(i.skip, i.take) for i in instructions])
    return dataset, builder.info.features.deserialize_example
  import tensorflow_datasets as tfds  # imported lazily: only TFDS runs need it
  read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed)
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=is_training,
                                 read_config=read_config)
  except (AssertionError, FileNotFoundError, ValueError) as error:
    raise FileNotFoundError(f"{not_prepared_hint}\n({error})") from error
  logging.warning("TFDS %s (split %s) is read by tfds.as_dataset (not TFRecord files on "
                  "disk): no corrupt-record guard, and examples are decoded before any "
                  "shuffle.", builder.name, split)
  return dataset, lambda example: example


def encoded_dataset(name: str, split: str, data_dir: str | None = None,
                    download: bool = False, is_training: bool = False,
                    input_context: tf.distribute.InputContext | None = None,
                    seed: int | None = None) -> tuple[tf.data.Dataset, Callable]:
  """(dataset, decode) of a detection builder's split: `decode` maps one element to the
  decode_example dict (`to_decoded`). Shuffle `dataset`, then map `decode`."""
  builder = load_builder(name, data_dir)
  if download:
    builder.download_and_prepare()
  hint = TFDS_HINT.format(name=name, split=split, data_dir=data_dir or "~/tensorflow_datasets")
  dataset, decode = encoded_split(builder, split, is_training, input_context, seed, hint)
  return dataset, lambda element: to_decoded(decode(element))


def decoded_dataset(name: str, split: str, data_dir: str | None = None,
                    download: bool = False, is_training: bool = False,
                    input_context: tf.distribute.InputContext | None = None,
                    seed: int | None = None) -> tf.data.Dataset:
  """The split's examples as decoded dicts (see `to_decoded`); files shuffled in training.

  Sharding across input pipelines: by file (record_files; tfds' ReadConfig where TFDS
  reads). Raises FileNotFoundError with the `tfds build` command when the data is not
  prepared and `download` is False.
  """
  dataset, decode = encoded_dataset(name, split, data_dir, download, is_training,
                                    input_context, seed)
  return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=not is_training or seed is not None)
