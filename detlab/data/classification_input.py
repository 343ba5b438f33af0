"""The classification input pipeline: ImageNet-layout TFRecords or a TFDS image-classification
builder -> {"images": float32 [B, S, S, 3], "labels": int32 [B]} (+ mixing keys).

training: decode -> random resized crop (area 0.08-1, aspect 3/4-4/3, TF-slim/tfm's
          min_object_covered 0.1, whole image when 10 tries fail) -> resize S x S -> flip
          -> [AutoAugment | RandAugment] (uint8, tfm ops) -> normalise -> batch
          -> [Mixup/CutMix (detlab.data.mixup_cutmix)]
eval:     decode -> centre crop 0.875 of the shorter side -> resize S x S -> normalise
The training shuffle holds encoded examples (decoded after it), so input checkpoints stay
small; a truncated or corrupt TFRecord shard (own records or a TFDS split) is named, counted
and skipped from its bad record on (record_files), not a DataLossError crash loop.
Normalisation: (pixel - mean) / std per channel in 0-255 units: the config's mean/std if
set, else the backbone's input convention (`detlab.backbones.input_convention(model)`,
passed to `make_classification_dataset`), else ImageNet's.

Exact resume: crop and flip draw from a stateless seed per example, the mix from one per
batch, both taken from a `tf.data.Dataset.random` zipped into the pipeline, whose position
the iterator checkpoint holds. tfm's AutoAugment/RandAugment use stateful random ops and draw
fresh randomness after a resume (as in detection).
"""
import dataclasses
from typing import Callable

from absl import logging
import gin
import tensorflow as tf
from official.vision.ops import augment, preprocess_ops

from detlab.data import record_files, tfds_source
from detlab.data.classification_example import ENCODED, LABEL
from detlab.data.mixup_cutmix import mix_batch
from detlab.data.seeds import example_seeds, with_example_seeds, worker_seed

AUGMENTS = (None, "autoaugment", "randaugment")


@gin.register(module="detlab.data")
@dataclasses.dataclass
class ClassificationInputConfig:
  """Where the data is and how it is augmented; every default is the papers' recipe."""
  file_pattern: str = ""  # comma-separated globs of ImageNet-layout TFRecords
  tfds_name: str = ""  # or a TFDS builder with "image" and "label" ('imagenette', ...)
  tfds_split: str = "train"
  tfds_data_dir: str | None = None
  tfds_download: bool = False
  is_training: bool = True
  image_size: int = 224
  label_offset: int = 0  # -1 for TF's own 1-based ImageNet records (0 = background)
  mean: tuple | None = None  # None: the backbone's convention (see the module docstring)
  std: tuple | None = None
  area_range: tuple = (0.08, 1.0)
  aspect_ratio_range: tuple = (3 / 4, 4 / 3)
  center_crop_fraction: float = 0.875
  augment: str | None = None  # None | "autoaugment" | "randaugment"
  autoaugment_policy: str = "v0"  # the ImageNet policy (tfm / the AutoAugment paper)
  randaugment_layers: int = 2
  randaugment_magnitude: float = 10.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  shuffle_buffer: int = 10000
  cache: bool = False

  def __post_init__(self):
    if bool(self.file_pattern) == bool(self.tfds_name):
      raise ValueError("Set exactly one of ClassificationInputConfig.file_pattern (TFRecords) "
                       "and .tfds_name (a TFDS builder).")
    if self.augment not in AUGMENTS:
      raise ValueError(f"ClassificationInputConfig.augment must be one of {AUGMENTS}, got "
                       f"{self.augment!r}.")


def decode_record(serialized: tf.Tensor, label_offset: int = 0) -> dict:
  """An ImageNet-layout Example -> {"image": uint8 [H, W, 3], "label": int32 []}."""
  parsed = tf.io.parse_single_example(serialized, {
      ENCODED: tf.io.FixedLenFeature([], tf.string),
      LABEL: tf.io.FixedLenFeature([], tf.int64)})
  image = tf.io.decode_image(parsed[ENCODED], channels=3, expand_animations=False)
  return {"image": image, "label": tf.cast(parsed[LABEL], tf.int32) + label_offset}


def random_resized_crop(image: tf.Tensor, size: int, seed: tf.Tensor,
                        area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
  """uint8 [H, W, 3] -> float32 [size, size, 3] (0-255) of a random crop (stateless)."""
  shape = tf.shape(image)
  whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, whole, seed=seed, min_object_covered=0.1, aspect_ratio_range=aspect_ratio_range,
      area_range=area_range, max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  return tf.image.resize(tf.cast(crop, tf.float32), [size, size], method="bilinear")


def center_crop(image: tf.Tensor, size: int, fraction: float = 0.875) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [size, size, 3]: the central square of `fraction` x the
  shorter side, resized (the ImageNet eval crop)."""
  shape = tf.shape(image)
  side = tf.cast(tf.round(fraction * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)),
                 tf.int32)
  top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
  crop = image[top:top + side, left:left + side]
  return tf.image.resize(tf.cast(crop, tf.float32), [size, size], method="bilinear")


def normalization(config: ClassificationInputConfig, convention=None) -> tuple:
  """(mean, std) float32 [3] in 0-255 units: config's, else the convention's, else ImageNet's."""
  mean = config.mean or (convention.mean if convention else preprocess_ops.MEAN_RGB)
  std = config.std or (convention.std if convention else preprocess_ops.STDDEV_RGB)
  return tf.constant(mean, tf.float32), tf.constant(std, tf.float32)


class ClassificationParser:
  """One decoded example {"image", "label"} (+ seed in training) -> {"images", "labels"}."""

  def __init__(self, config: ClassificationInputConfig, convention=None):
    self.config = config
    self.augmenter = None
    if config.augment == "autoaugment":
      self.augmenter = augment.AutoAugment(config.autoaugment_policy)
    elif config.augment == "randaugment":
      self.augmenter = augment.RandAugment(config.randaugment_layers,
                                           config.randaugment_magnitude)
    self.mean, self.std = normalization(config, convention)

  def __call__(self, data: dict, seed: tf.Tensor | None = None) -> dict:
    c = self.config
    image = data["image"]
    if c.is_training:
      crop_seed, flip_seed = example_seeds(seed, 2)
      image = random_resized_crop(image, c.image_size, crop_seed, c.area_range,
                                  c.aspect_ratio_range)
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
      if self.augmenter is not None:
        image = tf.cast(self.augmenter.distort(
            tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)), tf.float32)
    else:
      image = center_crop(image, c.image_size, c.center_crop_fraction)
    image = (image - self.mean) / self.std
    image.set_shape([c.image_size, c.image_size, 3])
    return {"images": image, "labels": tf.cast(data["label"], tf.int32)}


def tfds_examples(config: ClassificationInputConfig, input_context=None,
                  seed: int | None = None) -> tuple[tf.data.Dataset, Callable]:
  """(examples, decode) of a TFDS image-classification split: encoded examples (read through
  the corrupt-record guard where stored as TFRecords, tfds_source.encoded_split) and the
  function to {"image": uint8 [H, W, 3], "label": int32}."""
  import tensorflow_datasets as tfds  # only TFDS runs need it
  builder = tfds.builder(config.tfds_name, data_dir=config.tfds_data_dir)
  missing = [k for k in ("image", "label") if k not in builder.info.features]
  if missing:
    raise ValueError(f"TFDS builder {config.tfds_name!r} has no {missing} feature(s); an "
                     "image-classification builder has 'image' and 'label'.")
  if config.tfds_download:
    builder.download_and_prepare()
  hint = (f"The TFDS data set {config.tfds_name!r} (split {config.tfds_split!r}) is not "
          f"prepared. Prepare it with:\n  tfds build {config.tfds_name} --data_dir="
          f"{config.tfds_data_dir or '~/tensorflow_datasets'}\nor set "
          "ClassificationInputConfig.tfds_download = True.")
  dataset, decode_tfds = tfds_source.encoded_split(builder, config.tfds_split,
                                                   config.is_training, input_context, seed,
                                                   hint)

  def decode(element):
    example = decode_tfds(element)
    image = example["image"]
    if image.shape[-1] == 1:  # grayscale builders (e.g. mnist)
      image = tf.image.grayscale_to_rgb(image)
    return {"image": image, "label": tf.cast(example["label"], tf.int32) + config.label_offset}
  return dataset, decode


def record_examples(config: ClassificationInputConfig, input_context=None,
                    seed: int | None = None) -> tuple[tf.data.Dataset, Callable]:
  """(records, decode) of the TFRecords matching config.file_pattern: serialized examples
  (training: files shuffled) and the function to {"image", "label"}. A truncated or corrupt
  record ends its file's stream, named in the log and counted (record_files.SKIPPED), and the
  run goes on."""
  files = []
  for pattern in config.file_pattern.split(","):
    files += sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(
        f"No files match the classification file pattern {config.file_pattern!r}. Write "
        "records with `python -m data_tools.create_classification_tfrecord` (a folder of "
        "class folders) or `python -m data_tools.make_classification_dataset` (built-in).")
  deterministic = not config.is_training or seed is not None
  dataset = record_files.sharded_records(files, input_context, shuffle=config.is_training,
                                         seed=seed, deterministic=deterministic)
  logging.info("Input %s: %d file(s).", config.file_pattern, len(files))
  return dataset, lambda record: decode_record(record, config.label_offset)


def make_classification_dataset(config: ClassificationInputConfig, batch_size: int,
                                input_context: tf.distribute.InputContext | None = None,
                                seed: int | None = None,
                                convention=None) -> tf.data.Dataset:
  """Batches of {"images" [B, S, S, 3], "labels" [B]} (+ "mix_labels", "mix_weight" [B]
  with Mixup/CutMix). `batch_size` is per replica; training batches are full and endless.
  `convention`: the backbone's `InputConvention` (used where config.mean/std are None)."""
  source = tfds_examples if config.tfds_name else record_examples
  dataset, decode = source(config, input_context, seed)
  deterministic = not config.is_training or seed is not None
  if config.cache:
    dataset = dataset.cache()
  parser = ClassificationParser(config, convention)
  if config.is_training:  # encoded examples in the buffer (and input checkpoints)
    dataset = dataset.repeat().shuffle(config.shuffle_buffer, seed=seed)
  dataset = dataset.map(tf.autograph.experimental.do_not_convert(decode), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  if config.is_training:
    seed = worker_seed(seed, input_context)
    dataset = with_example_seeds(dataset, seed)  # exact resume (see module doc)
  dataset = dataset.map(tf.autograph.experimental.do_not_convert(parser), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  dataset = dataset.batch(batch_size, drop_remainder=config.is_training)
  if config.is_training and (config.mixup_alpha > 0 or config.cutmix_alpha > 0):
    batch_seeds = tf.data.Dataset.random(seed=None if seed is None else seed + 1).batch(2)
    dataset = tf.data.Dataset.zip((dataset, batch_seeds)).map(
        lambda batch, s: mix_batch(batch, s, config.mixup_alpha, config.cutmix_alpha),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  return dataset.prefetch(tf.data.AUTOTUNE)
