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
"""
import tensorflow as tf

from detlab.data import label_map as label_maps

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


def decoded_dataset(name: str, split: str, data_dir: str | None = None,
                    download: bool = False, is_training: bool = False,
                    input_context: tf.distribute.InputContext | None = None,
                    seed: int | None = None) -> tf.data.Dataset:
  """The split's examples as decoded dicts (see `to_decoded`); files shuffled in training.

  Sharding across input pipelines is tfds' (ReadConfig.input_context). Raises
  FileNotFoundError with the `tfds build` command when the data is not prepared and
  `download` is False.
  """
  import tensorflow_datasets as tfds
  builder = load_builder(name, data_dir)
  if download:
    builder.download_and_prepare()
  read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed)
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=is_training,
                                 read_config=read_config,
                                 decoders=None)
  except (AssertionError, FileNotFoundError, ValueError) as error:
    hint = TFDS_HINT.format(name=name, split=split, data_dir=data_dir or "~/tensorflow_datasets")
    raise FileNotFoundError(f"{hint}\n({error})") from error
  return dataset.map(to_decoded, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=not is_training or seed is not None)
