"""Detection input pipeline: TFRecords -> decode -> augment -> resize+pad -> anchor targets.

Images are normalized with ImageNet mean/std (x 255) *before* padding, so padding with 0
equals the mean colour (reference convention). Aspect-preserving resize with scale jitter and
random crop, horizontal flip, boxes clipped and empty boxes dropped, ground truth padded to
`max_instances`. Every output has a static shape.

Category ids map to class index `id - 1` (reference convention: COCO ids 1..90 -> 90 logits),
so non-contiguous ids need no remapping; an id outside 1..num_classes is an error.
"""
import dataclasses

import gin
import tensorflow as tf
from absl import logging
from official.vision.ops import box_ops, preprocess_ops

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
  """How one split is read and transformed."""
  file_pattern: str
  is_training: bool
  aug_scale_min: float = 1.0      # scale jitter U(min, max); the paper's recipe: 0.1, 2.0
  aug_scale_max: float = 1.0
  flip: bool = True
  max_instances: int = 100
  shuffle_buffer: int = 1024
  cache: bool = False
  skip_crowd_during_training: bool = True


def _pad(tensor, size, value=0):
  return preprocess_ops.clip_or_pad_to_fixed_size(tensor, size, constant_values=value)


class DetectionParser:
  """Turns one decoded example into a model-ready dict (train or eval form)."""

  def __init__(self, config: InputConfig, anchors: AnchorConfig, num_classes: int):
    self.config, self.anchors, self.num_classes = config, anchors, num_classes
    self.assigner = AnchorTargetAssigner(anchors)

  def __call__(self, serialized: tf.Tensor) -> dict:
    data = decode_example(serialized)
    image, boxes = data["image"], data["boxes"]
    classes = data["classes"] - 1
    tf.debugging.assert_less(
        classes, self.num_classes,
        message=f"a category id exceeds num_classes={self.num_classes}; set num_classes to "
                "the largest category id in your label map")
    tf.debugging.assert_non_negative(classes, message="category ids must be >= 1")
    original_size = tf.shape(image)[:2]
    size = self.anchors.image_size
    c = self.config

    image = preprocess_ops.normalize_image(image)
    keep = tf.ones_like(classes, tf.bool)
    if c.is_training and c.skip_crowd_during_training:
      keep = tf.logical_not(data["is_crowd"])
    if c.is_training and c.flip:
      normalized = box_ops.normalize_boxes(boxes, original_size)
      image, normalized, _ = preprocess_ops.random_horizontal_flip(image, normalized)
      boxes = box_ops.denormalize_boxes(normalized, original_size)
    jitter = (c.aug_scale_min, c.aug_scale_max) if c.is_training else (1.0, 1.0)
    image, image_info = preprocess_ops.resize_and_crop_image(
        image, [size, size], [size, size], aug_scale_min=jitter[0], aug_scale_max=jitter[1])
    image.set_shape([size, size, 3])

    if not c.is_training:
      return self._eval_outputs(image, image_info, data, classes)

    scale, offset = image_info[2, :], image_info[3, :]
    boxes = preprocess_ops.resize_and_crop_boxes(boxes, scale, image_info[1, :], offset)
    # resize_and_crop_boxes clips to the crop; boxes cropped away have zero area.
    non_empty = tf.logical_and(boxes[:, 2] > boxes[:, 0], boxes[:, 3] > boxes[:, 1])
    keep = tf.logical_and(keep, non_empty)
    boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
    cls_targets, box_targets = self.assigner(boxes, classes)
    return {"images": image, "cls_targets": cls_targets, "box_targets": box_targets,
            "source_ids": data["source_id"]}

  def _eval_outputs(self, image, image_info, data, classes) -> dict:
    """Eval form: ground truth stays in original pixels for COCO evaluation."""
    n = self.config.max_instances
    count = tf.shape(classes)[0]
    return {
        "images": image,
        "source_ids": data["source_id"],
        "image_info": image_info,  # [[orig h, w], [scaled h, w], [scale y, x], [offset y, x]]
        "gt_boxes": _pad(data["boxes"], n),
        "gt_classes": _pad(classes, n, -1),
        "gt_is_crowd": _pad(tf.cast(data["is_crowd"], tf.int32), n),
        "gt_areas": _pad(data["areas"], n),
        "gt_count": tf.minimum(count, n),
    }


def list_files(file_pattern: str, hint_dir: str | None = None) -> list[str]:
  """Files matching a comma-separated pattern, or an error saying how to create them."""
  files = []
  for pattern in file_pattern.split(","):
    files += sorted(tf.io.gfile.glob(pattern))
  if not files:
    hint = BUILTIN_DATA_HINT.format(dir=hint_dir or "data/shapes")
    raise FileNotFoundError(f"No files match the data file pattern {file_pattern!r}.\n{hint}")
  return files


def make_dataset(config: InputConfig, anchors: AnchorConfig, num_classes: int,
                 batch_size: int, input_context: tf.distribute.InputContext | None = None,
                 seed: int | None = None) -> tf.data.Dataset:
  """A batched dataset of parsed examples. `batch_size` is per replica."""
  files = list_files(config.file_pattern)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if input_context and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  if config.is_training:
    dataset = dataset.shuffle(len(files), seed=seed).repeat()
  dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(8, len(files)),
                               num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=not config.is_training or seed is not None)
  if config.cache:
    dataset = dataset.cache()
  if config.is_training:
    dataset = dataset.shuffle(config.shuffle_buffer, seed=seed)
  parser = DetectionParser(config, anchors, num_classes)
  dataset = dataset.map(parser, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=not config.is_training or seed is not None)
  dataset = dataset.batch(batch_size, drop_remainder=config.is_training)
  logging.info("Input %s: %d file(s), batch %d per replica.", config.file_pattern,
               len(files), batch_size)
  return dataset.prefetch(tf.data.AUTOTUNE)
