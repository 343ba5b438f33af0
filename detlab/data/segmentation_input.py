"""Semantic segmentation input pipeline: records (or a TFDS builder with masks) -> decode -> flip + scale jitter + crop on
image and label map together -> normalize -> pad (labels with the ignore label 255).

Training: horizontal flip (p 1/2), aspect-preserving resize to `image_size` x U(aug_scale_min,
aug_scale_max) (the recipe's 0.5-2.0), a random `image_size`^2 crop, padding at the bottom/right.
Images resize bilinearly, labels by nearest neighbour (no invented classes); padded label
pixels are 255 and count nowhere. The randomness is stateless, seeded per example from a
`tf.data.Dataset.random` zipped into the pipeline (its position is in the iterator
checkpoint), so a resumed run sees the same augmentations (as detection_input).
Eval: the same resize at scale 1 (the longer side to image_size) and padding; the batch also
holds each image's original-size label map (padded to the batch's largest with 255) and
tfm's image_info [[orig h, w], [size, size], [scale y, x], [offset y, x]], so logits are
resized back to the original resolution (detlab.evaluation.segmentation).
Images are normalized by the backbone's input convention before padding (0 = mean colour).
"""
import dataclasses

from absl import logging
import gin
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.data import record_files, tfds_segmentation
from detlab.data.detection_input import eval_padding_values, list_files
from detlab.data.seeds import example_seeds, with_example_seeds, worker_seed
from detlab.data.segmentation_example import IGNORE_LABEL, decode_segmentation_example


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class SegmentationInputConfig:
  file_pattern: str = ""
  is_training: bool = True
  image_size: int = 512
  aug_scale_min: float = 0.5
  aug_scale_max: float = 2.0
  flip: bool = True
  shuffle_buffer: int = 1000
  cache: bool = False
  tfds_name: str = ""  # a TFDS builder with masks (tfds_segmentation.SPECS) instead of files
  tfds_split: str = "train"
  tfds_data_dir: str | None = None
  tfds_download: bool = False

  def __post_init__(self):
    if not 0 < self.aug_scale_min <= self.aug_scale_max:
      raise ValueError(f"need 0 < aug_scale_min <= aug_scale_max, got {self.aug_scale_min}, "
                       f"{self.aug_scale_max}.")


def stateless_flip(image: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor):
  """Mirrors image [H, W, C] and labels [H, W] together with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return (tf.cond(flip, lambda: image[:, ::-1], lambda: image),
          tf.cond(flip, lambda: labels[:, ::-1], lambda: labels))


def resize_crop_pad(image: tf.Tensor, labels: tf.Tensor, size: int, scale: tf.Tensor,
                    crop_fraction: tf.Tensor):
  """Aspect-preserving resize to `size` x `scale`, crop `size`^2 at `crop_fraction` [2] of the
  slack, pad to `size`^2 (image 0, labels IGNORE_LABEL). tfm's resize_and_crop arithmetic.

  image float32 [H, W, 3], labels [H, W] uint8 -> ([size, size, 3], [size, size] uint8,
  image_info [4, 2])."""
  labels, info = resize_crop_pad_labels(labels, size, scale, crop_fraction)
  new_size = tf.cast(tf.round(info[0] * info[2]), tf.int32)
  offset = tf.cast(info[3], tf.int32)
  image = tf.image.resize(image, new_size, method="bilinear")
  image = image[offset[0]:offset[0] + size, offset[1]:offset[1] + size]
  image = tf.image.pad_to_bounding_box(image, 0, 0, size, size)
  return image, labels, info


def resize_crop_pad_labels(labels: tf.Tensor, size: int, scale: tf.Tensor,
                           crop_fraction: tf.Tensor):
  """The label map's half of resize_crop_pad (nearest neighbour, padding IGNORE_LABEL); also
  used on its own by the joint input, whose image goes through the detection parser.
  labels [H, W] uint8 -> ([size, size] uint8, image_info [4, 2])."""
  image_size = tf.cast(tf.shape(labels)[:2], tf.float32)
  desired = tf.constant([size, size], tf.float32)
  target = tf.round(scale * desired)
  scaled = tf.round(image_size * tf.minimum(target[0] / image_size[0],
                                            target[1] / image_size[1]))
  offset = tf.cast(tf.maximum(scaled - desired, 0.0) * crop_fraction, tf.int32)
  labels = tf.image.resize(labels[..., None], tf.cast(scaled, tf.int32), method="nearest")
  # Shift by one so that padding with 0 marks ignore, then map 0 back to IGNORE_LABEL.
  labels = tf.cast(labels[offset[0]:offset[0] + size, offset[1]:offset[1] + size], tf.int32) + 1
  labels = tf.image.pad_to_bounding_box(labels, 0, 0, size, size)[..., 0]
  labels = tf.cast(tf.where(labels == 0, IGNORE_LABEL, labels - 1), tf.uint8)
  info = tf.stack([image_size, desired, scaled / image_size, tf.cast(offset, tf.float32)])
  return labels, info


class SegmentationParser:
  """Decoded {"image", "labels", "source_id"} (+ a seed [2] in training) -> model inputs.

  Training -> {"images" [S, S, 3] float32, "labels" [S, S] uint8};
  eval -> also "image_info" [4, 2] and "original_labels" [H, W] uint8."""

  def __init__(self, config: SegmentationInputConfig,
               convention: InputConvention | None = None):
    self.config = config
    self.convention = convention or IMAGENET_MEAN_STD

  def __call__(self, data: dict, seed: tf.Tensor | None = None) -> dict:
    c = self.config
    image = self.convention.normalize(data["image"])
    labels = data["labels"]
    if c.is_training:
      flip_seed, scale_seed, crop_seed = example_seeds(seed, 3)
      if c.flip:
        image, labels = stateless_flip(image, labels, flip_seed)
      scale = tf.random.stateless_uniform([], scale_seed, c.aug_scale_min, c.aug_scale_max)
      image, labels, _ = resize_crop_pad(image, labels, c.image_size, scale,
                                         tf.random.stateless_uniform([2], crop_seed))
      return {"images": image, "labels": labels}
    image, labels_resized, info = resize_crop_pad(image, labels, c.image_size,
                                                  tf.constant(1.0), tf.zeros([2]))
    return {"images": image, "labels": labels_resized, "image_info": info,
            "original_labels": data["labels"]}


def make_dataset(config: SegmentationInputConfig, batch_size: int,
                 input_context: tf.distribute.InputContext | None = None,
                 seed: int | None = None,
                 convention: InputConvention | None = None) -> tf.data.Dataset:
  """Batched parsed examples; `batch_size` per replica; `convention` the backbone's
  (`detlab.backbones.input_convention(model)`; None: ImageNet mean/std)."""
  deterministic = not config.is_training or seed is not None
  if config.tfds_name:
    dataset, decode = tfds_segmentation.encoded_dataset(
        config.tfds_name, config.tfds_split, config.tfds_data_dir, config.tfds_download,
        config.is_training, input_context, seed)
    source = config.tfds_name
  else:
    files = list_files(config.file_pattern)
    source = f"{config.file_pattern} ({len(files)} file(s))"
    # A truncated/corrupt record ends its file's stream, logged and counted (record_files).
    dataset = record_files.sharded_records(files, input_context, shuffle=config.is_training,
                                           seed=seed, deterministic=deterministic)
    decode = decode_segmentation_example
  if config.cache:
    dataset = dataset.cache()
  if config.is_training:  # encoded examples in the buffer, decoded after it
    dataset = dataset.repeat().shuffle(config.shuffle_buffer, seed=seed)
  dataset = dataset.map(tf.autograph.experimental.do_not_convert(decode), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  dataset = parse_and_batch(dataset, SegmentationParser(config, convention),
                            config.is_training, batch_size, seed, input_context)
  logging.info("Segmentation input %s: batch %d per replica.", source, batch_size)
  return dataset


def parse_and_batch(dataset: tf.data.Dataset, parser, is_training: bool, batch_size: int,
                    seed: int | None, input_context=None) -> tf.data.Dataset:
  """The tail of every pipeline with label maps (segmentation, joint): per-example seeds in
  training, `parser`, then batches; eval batches are padded, label maps ("*labels") with the
  ignore label (original-size maps differ in size), the rest as detection's eval batches
  (detection_input.eval_padding_values: gt_classes -1, strings "", the rest 0)."""
  deterministic = not is_training or seed is not None
  if is_training:
    dataset = with_example_seeds(dataset, worker_seed(seed, input_context))
  dataset = dataset.map(tf.autograph.experimental.do_not_convert(parser), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  if is_training:
    dataset = dataset.batch(batch_size, drop_remainder=True)
  else:
    padding = eval_padding_values(dataset.element_spec)
    padding.update({k: tf.constant(IGNORE_LABEL, tf.uint8) for k in padding
                    if k.endswith("labels")})
    dataset = dataset.padded_batch(batch_size, padding_values=padding)
  return dataset.prefetch(tf.data.AUTOTUNE)
