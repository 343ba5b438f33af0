"""Detection input pipeline: source -> decode -> augment -> resize+pad -> anchor targets.

Sources: TFRecord file patterns (OD-API keys; the built-in data set is one) or a TFDS
detection builder (`tfds_name`, see tfds_source.py); both give decode_example's dict.
Training transforms, in order: [mosaic of 4 decoded examples] -> `augmentations` steps on the
uint8 image and pixel boxes (AutoAugment v0-v3, RandAugment; augment.py) -> normalization ->
horizontal flip -> aspect-preserving resize with scale jitter U(aug_scale_min, aug_scale_max)
and random crop -> boxes clipped, empty ones dropped -> at most `max_instances` boxes (the
largest; the number dropped is printed) -> anchor targets.

Images are normalized by the backbone's input convention (`detlab.backbones.input_convention`;
default ImageNet mean/std x 255, the reference's) *before* padding, so padding with 0 equals
the mean colour (reference convention). Every training output has a static shape; evaluation
ground truth stays in original pixels, all of it (each eval batch is padded to its own largest
box count, see `eval_padding_values`), with the scale kept.

Category ids map to class index `id - 1` (reference convention: COCO ids 1..90 -> 90 logits),
so non-contiguous ids need no remapping; an id outside 1..num_classes is an error.
"""
import dataclasses
from typing import Callable, NamedTuple

import gin
import tensorflow as tf
from absl import logging
from official.vision.ops import preprocess_ops

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.data import augment  # noqa: F401  (registers AutoAugment, RandAugment for gin)
from detlab.data import instance_masks as instance_mask_ops
from detlab.data import record_files, tfds_source
from detlab.data.instance_masks import InstanceMaskConfig
from detlab.data.mosaic import Mosaic, mosaic_dataset
from detlab.data.seeds import example_seeds, with_example_seeds, worker_seed
from detlab.data.source_id import encode_source_id
from detlab.data.tf_example import decode_example
from detlab.detection.anchors import AnchorConfig
from detlab.detection.targets import AnchorTargetAssigner

BUILTIN_DATA_HINT = ("Create the built-in data set with:\n"
                     "  python -m data_tools.make_shapes_dataset --output_dir={dir}\n"
                     "or point the file pattern at your own TFRecords, e.g.\n"
                     "  --gin_bindings=\"TRAIN_FILE_PATTERN='/path/train-*.tfrecord'\"")


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class InputConfig:
  """How one split is read and transformed.

  Source: `file_pattern` (comma-separated TFRecord globs) unless `tfds_name` is set (a TFDS
  detection builder such as 'coco/2017' or 'voc/2007', read from `tfds_data_dir`, downloaded
  only if `tfds_download`). Training steps: `augmentations` is a list of callables
  `(image uint8 [H, W, 3], boxes [M, 4] pixels) -> (image, boxes)` keeping the box count,
  e.g. [@AutoAugment()] or [@RandAugment()]; `mosaic` = @Mosaic() stitches 4 images.
  """
  file_pattern: str = ""
  is_training: bool = False
  aug_scale_min: float = 1.0      # scale jitter U(min, max); the paper's recipe: 0.1, 2.0
  aug_scale_max: float = 1.0
  flip: bool = True
  max_instances: int = 100  # training targets only; evaluation keeps every ground-truth box
  shuffle_buffer: int = 1024
  cache: bool = False
  skip_crowd_during_training: bool = True
  augmentations: tuple = ()
  mosaic: Mosaic | None = None
  tfds_name: str | None = None
  tfds_split: str = "train"
  tfds_data_dir: str | None = None
  tfds_download: bool = False
  instance_masks: InstanceMaskConfig | None = None  # @InstanceMaskConfig(): masks too

  def __post_init__(self):
    object.__setattr__(self, "augmentations", tuple(self.augmentations or ()))
    if self.instance_masks is not None:
      if self.tfds_name:
        raise ValueError(f"InputConfig.instance_masks reads masks from TFRecords "
                         f"(image/object/mask); tfds_name={self.tfds_name!r} gives none. "
                         "Convert the data with `python -m data_tools.create_coco_tfrecord "
                         "--include_masks` and set file_pattern instead.")
      if self.is_training and self.augmentations:
        raise ValueError("InputConfig.augmentations (AutoAugment/RandAugment) move the image "
                         "and boxes but not instance masks: with InputConfig.instance_masks "
                         "set InputConfig.augmentations = [] (flip, scale jitter, crop and "
                         "Mosaic move the masks too).")


class GeometricDraws(NamedTuple):
  """One training example's random geometry, drawn once and applied to everything that must
  stay aligned with the image (boxes here; the joint input's label map too).

  flip: bool [] (mirror left-right first); scale: float32 [] (the jitter factor of the
  output size); crop_fraction: float32 [2] (where the crop sits in the resized image's slack
  beyond the output size, y and x: 0 top/left, 1 bottom/right)."""
  flip: tf.Tensor
  scale: tf.Tensor
  crop_fraction: tf.Tensor


class DetectionParser:
  """Turns one decoded example into a model-ready dict (train or eval form)."""

  def __init__(self, config: InputConfig, anchors: AnchorConfig, num_classes: int,
               convention: InputConvention | None = None):
    self.config, self.anchors, self.num_classes = config, anchors, num_classes
    # What the backbone's weights expect (None: ImageNet mean/std, google/automl's).
    self.convention = convention or IMAGENET_MEAN_STD
    self.assigner = AnchorTargetAssigner(anchors)

  def __call__(self, example, seed: tf.Tensor | None = None) -> dict:
    """A serialized Example (string tensor) or decode_example's dict -> train/eval dict."""
    if isinstance(example, dict):
      return self.parse(example, seed)
    decode = (instance_mask_ops.decode_example_with_masks if self.config.instance_masks
              else decode_example)
    return self.parse(decode(example), seed)

  def draw_geometry(self, seed: tf.Tensor | None = None) -> GeometricDraws:
    """The flip, scale jitter and crop of one training example, from its stateless seed
    (int64 [2]; None: a fresh one from the global generator). The same seed gives the same
    draws, so a resumed run augments as the uninterrupted one would."""
    c = self.config
    flip_seed, scale_seed, crop_seed = example_seeds(seed, 3)
    flip = (tf.random.stateless_uniform([], flip_seed) < 0.5) if c.flip else tf.constant(False)
    return GeometricDraws(
        flip=flip,
        scale=tf.random.stateless_uniform([], scale_seed, c.aug_scale_min, c.aug_scale_max),
        crop_fraction=tf.random.stateless_uniform([2], crop_seed))

  def parse(self, data: dict, seed: tf.Tensor | None = None,
            draws: GeometricDraws | None = None) -> dict:
    """decode_example's dict -> model inputs (train: images + targets; eval: + ground truth).

    seed: int64 [2], this example's stateless seed for the flip and the scale jitter + crop
    (make_dataset draws one per example from a checkpointable tf.data.Dataset.random); None
    draws one from the stateful global generator. draws: the geometry itself
    (`draw_geometry(seed)`), for a caller that applies it to more than the image and boxes.
    With `InputConfig.instance_masks`, `data` holds the mask keys
    (instance_masks.decode_example_with_masks) and the outputs gain the mask keys
    (train: instance_masks.training_mask_outputs; eval: "gt_masks").
    """
    image, boxes = data["image"], data["boxes"]
    classes = data["classes"] - 1
    tf.debugging.assert_less(
        classes, self.num_classes,
        message=f"a category id exceeds num_classes={self.num_classes}; set num_classes to "
                "the largest category id in your label map")
    tf.debugging.assert_non_negative(classes, message="category ids must be >= 1")
    size = self.anchors.image_size
    c = self.config
    if c.is_training:
      for step in c.augmentations:
        image, boxes = step(image, boxes)
    original_size = tf.shape(image)[:2]

    image = self.convention.normalize(image)
    keep = tf.ones_like(classes, tf.bool)
    if c.is_training and c.skip_crowd_during_training:
      keep = tf.logical_not(data["is_crowd"])
    if c.is_training:
      draws = draws if draws is not None else self.draw_geometry(seed)
      flip_width = tf.shape(image)[1]
      image, boxes = horizontal_flip(image, boxes, draws.flip)
      image, image_info = jitter_resize_and_crop(image, size, draws.scale,
                                                 draws.crop_fraction)
    else:
      image, image_info = preprocess_ops.resize_and_crop_image(image, [size, size], [size, size])
    image.set_shape([size, size, 3])

    if not c.is_training:
      return self._eval_outputs(image, image_info, data, classes)

    scale, offset = image_info[2, :], image_info[3, :]
    boxes = preprocess_ops.resize_and_crop_boxes(boxes, scale, image_info[1, :], offset)
    # resize_and_crop_boxes clips to the crop; boxes cropped away have zero area.
    non_empty = tf.logical_and(boxes[:, 2] > boxes[:, 0], boxes[:, 3] > boxes[:, 1])
    keep = tf.logical_and(keep, non_empty)
    boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
    largest = largest_box_indices(boxes, c.max_instances, data["source_id"])
    boxes, classes = tf.gather(boxes, largest), tf.gather(classes, largest)
    cls_targets, box_targets = self.assigner(boxes, classes)
    # int32 byte codes, not strings: training batches go to TPUs/GPUs (see source_id.py).
    outputs = {"images": image, "cls_targets": cls_targets, "box_targets": box_targets,
               "source_ids": encode_source_id(data["source_id"])}
    if c.instance_masks is not None:
      instances = tf.gather(tf.where(keep)[:, 0], largest)
      outputs.update(instance_mask_ops.training_mask_outputs(
          data, image_info, draws.flip, flip_width, instances, boxes, classes,
          c.instance_masks, c.max_instances, size, seed))
    return outputs

  def _eval_outputs(self, image, image_info, data, classes) -> dict:
    """Eval form: every ground-truth box, in original pixels, for COCO evaluation.

    Not cut at `max_instances` (that bounds training targets only): the gt_* tensors keep all
    M boxes here and `make_dataset` pads each eval batch to its own largest M (`gt_count`
    says how many are real), so an image with 150 objects is evaluated against all 150.
    With instance masks (and `eval_masks`): "gt_masks" uint8 [M, H, W] at the original
    size (batches pad them with 0 to the batch's largest M, H, W)."""
    outputs = {
        "images": image,
        "source_ids": data["source_id"],
        "image_info": image_info,  # [[orig h, w], [scaled h, w], [scale y, x], [offset y, x]]
        "gt_boxes": tf.reshape(tf.cast(data["boxes"], tf.float32), [-1, 4]),
        "gt_classes": classes,
        "gt_is_crowd": tf.cast(data["is_crowd"], tf.int32),
        "gt_areas": tf.cast(data["areas"], tf.float32),
        "gt_count": tf.shape(classes)[0],
    }
    masks = self.config.instance_masks
    if masks is not None and masks.eval_masks:
      outputs["gt_masks"] = data["masks"]
    return outputs


# The two random training transforms below are written here, not taken from tfm's
# preprocess_ops (random_horizontal_flip, resize_and_crop_image), because those draw from
# stateful random ops, whose state a tf.data iterator checkpoint cannot hold: a resumed run
# would augment differently from an uninterrupted one. Here they take their draws as
# arguments (DetectionParser.draw_geometry: stateless, from a per-example seed), which makes
# resume exact. The resize/crop arithmetic and image_info layout are tfm's.


def horizontal_flip(image: tf.Tensor, boxes: tf.Tensor,
                    flip: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Mirrors image [H, W, C] and pixel boxes [M, 4] [y1, x1, y2, x2] where `flip` (bool [])."""
  width = tf.cast(tf.shape(image)[1], boxes.dtype)
  flipped_boxes = tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]],
                           axis=-1)
  return (tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image),
          tf.cond(flip, lambda: flipped_boxes, lambda: boxes))


def jitter_resize_and_crop(image: tf.Tensor, size: int, scale: tf.Tensor,
                           crop_fraction: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Aspect-preserving resize to `size` x `scale`, the `size` x `size` crop at
  `crop_fraction` [2] of the slack (the resized size beyond `size`), zero padding to
  `size` x `size` at the bottom/right.

  Returns the image and tfm's image_info [[orig h, w], [size, size], [scale y, x],
  [offset y, x]] (offset: the crop's top-left in the resized image).
  """
  image_size = tf.cast(tf.shape(image)[:2], tf.float32)
  desired = tf.constant([size, size], tf.float32)
  scaled = tf.round(scale * desired)
  scaled = tf.round(image_size * tf.minimum(scaled[0] / image_size[0],
                                            scaled[1] / image_size[1]))
  max_offset = tf.maximum(scaled - desired, 0.0)
  offset = tf.cast(max_offset * crop_fraction, tf.int32)
  resized = tf.image.resize(image, tf.cast(scaled, tf.int32))
  cropped = resized[offset[0]:offset[0] + size, offset[1]:offset[1] + size, :]
  output = tf.image.pad_to_bounding_box(cropped, 0, 0, size, size)
  info = tf.stack([image_size, desired, scaled / image_size, tf.cast(offset, tf.float32)])
  return output, info


def keep_largest_boxes(boxes: tf.Tensor, classes: tf.Tensor, max_instances: int,
                       source_id: tf.Tensor | str = "") -> tuple[tf.Tensor, tf.Tensor]:
  """At most `max_instances` boxes: the largest by area, in their original order.

  boxes [M, 4] [y1, x1, y2, x2] pixels, classes [M]. When boxes are dropped, tf.print writes
  "detlab input: image <id> has M boxes; kept the N largest, dropped M - N" to stderr.
  """
  index = largest_box_indices(boxes, max_instances, source_id)
  return tf.gather(boxes, index), tf.gather(classes, index)


def largest_box_indices(boxes: tf.Tensor, max_instances: int,
                        source_id: tf.Tensor | str = "") -> tf.Tensor:
  """int32 [N]: the indices of keep_largest_boxes' boxes (ascending), with its report."""
  count = tf.shape(boxes)[0]
  kept = tf.minimum(count, max_instances)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  index = tf.sort(tf.math.top_k(areas, kept).indices)

  def report():
    tf.print("detlab input: image", source_id, "has", count, "boxes; kept the", kept,
             "largest, dropped", count - kept)
    return tf.constant(True)

  reported = tf.cond(count > max_instances, report, lambda: tf.constant(False))
  with tf.control_dependencies([reported]):
    return tf.identity(index)


def list_files(file_pattern: str, hint_dir: str | None = None) -> list[str]:
  """Files matching a comma-separated pattern, or an error saying how to create them."""
  files = []
  for pattern in file_pattern.split(","):
    files += sorted(tf.io.gfile.glob(pattern))
  if not files:
    hint = BUILTIN_DATA_HINT.format(dir=hint_dir or "data/shapes")
    raise FileNotFoundError(f"No files match the data file pattern {file_pattern!r}.\n{hint}")
  return files


def _records(config: InputConfig, input_context, seed) -> tf.data.Dataset:
  """Serialized Examples from config.file_pattern (training: shuffled, infinite)."""
  files = list_files(config.file_pattern)
  # A truncated/corrupt record ends its file's stream, logged and counted (record_files).
  dataset = record_files.sharded_records(
      files, input_context, shuffle=config.is_training, seed=seed,
      deterministic=not config.is_training or seed is not None)
  logging.info("Input %s: %d file(s).", config.file_pattern, len(files))
  return dataset


def source_dataset(config: InputConfig, input_context: tf.distribute.InputContext | None = None,
                   seed: int | None = None, decoded: bool = False) -> tf.data.Dataset:
  """The configured source: serialized Examples (TFRecords; decode_example's dicts if
  `decoded`) or decoded dicts (TFDS). Cached if asked (before repeat: the cache of an
  infinite stream would never complete); in training repeated and shuffled, the shuffle
  holding encoded examples (TFDS ones are decoded after it)."""
  if config.tfds_name:
    dataset, decode = tfds_source.encoded_dataset(
        config.tfds_name, config.tfds_split, config.tfds_data_dir, config.tfds_download,
        config.is_training, input_context, seed)
  else:
    dataset = _records(config, input_context, seed)
    decode = (instance_mask_ops.decode_example_with_masks if config.instance_masks
              else decode_example)
  if config.cache:
    dataset = dataset.cache()
  if config.is_training:
    # Encoded examples in the buffer (and so in every input checkpoint), decoded after.
    dataset = dataset.repeat().shuffle(config.shuffle_buffer, seed=seed)
  if decoded or config.tfds_name:
    dataset = dataset.map(tf.autograph.experimental.do_not_convert(decode),
                          num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=not config.is_training or seed is not None)
  return dataset


def eval_padding_values(element_spec: dict) -> dict:
  """padded_batch's padding for eval examples: gt_classes -1 (no class), strings "", the
  rest 0.

  Eval batches are padded to the batch's own largest ground-truth count rather than to a
  fixed `max_instances`, so no box is lost. That keeps evaluation valid on every strategy:
  only `task.predict_features` ("images" [B, S, S, 3], "image_info" [B, 4, 2], both of fixed
  size per example) enter the replicas' computation; the gt_* tensors stay on the host,
  where the evaluator reads the first `gt_count` entries of each row."""
  return {k: (tf.constant(-1, spec.dtype) if k == "gt_classes"
              else tf.constant("", tf.string) if spec.dtype == tf.string
              else tf.zeros([], spec.dtype))
          for k, spec in element_spec.items()}


def make_dataset(config: InputConfig, anchors: AnchorConfig, num_classes: int,
                 batch_size: int, input_context: tf.distribute.InputContext | None = None,
                 seed: int | None = None,
                 convention: InputConvention | None = None) -> tf.data.Dataset:
  """A batched dataset of parsed examples. `batch_size` is per replica; `convention` is the
  backbone's input normalization (`detlab.backbones.input_convention(model)`; None: ImageNet)."""
  parser = DetectionParser(config, anchors, num_classes, convention)
  deterministic = not config.is_training or seed is not None
  if config.is_training and config.mosaic is not None and config.mosaic.prob > 0:
    make_decoded: Callable = lambda s: source_dataset(config, input_context, s, decoded=True)
    dataset = mosaic_dataset(make_decoded, config.mosaic, anchors.image_size, seed,
                             parser.convention)
    parse = parser.parse
  else:
    dataset = source_dataset(config, input_context, seed)
    parse = parser
  if config.is_training:
    # One stateless seed per example, from a dataset whose position the iterator checkpoint
    # holds (unlike the state of random ops inside map functions).
    dataset = with_example_seeds(dataset, worker_seed(seed, input_context))
  # Not through autograph: the parser is written in TF ops (tf.cond where it branches), and
  # converting it and everything it calls took ~30 s of every run's and test's start-up.
  dataset = dataset.map(tf.autograph.experimental.do_not_convert(parse),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  if config.is_training:
    dataset = dataset.batch(batch_size, drop_remainder=True)
  else:
    dataset = dataset.padded_batch(batch_size,
                                   padding_values=eval_padding_values(dataset.element_spec))
  logging.info("Input %s: batch %d per replica.", config.tfds_name or config.file_pattern,
               batch_size)
  return dataset.prefetch(tf.data.AUTOTUNE)
