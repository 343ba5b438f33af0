"""Joint detection + segmentation input: one record (OD-API detection keys plus the semantic
map under segmentation_example.MASK_KEY, e.g. the built-in shapes set written with
--semantic_maps) -> the detection parser's images and anchor targets AND the label map,
with the same flip, scale jitter and crop applied to image, boxes and mask.

The detection half is detection_input.DetectionParser unchanged. The label map follows it by
taking the detection parser's own draws: `DetectionParser.draw_geometry(seed)` gives the
flip, scale and crop place once, `parse(data, draws=...)` applies them to image and boxes,
and here the same values go to the mask (segmentation_input.resize_crop_pad_labels uses the
same tfm resize/crop arithmetic). So the mask is transformed exactly as the image (nearest
neighbour, padding = 255) whatever the parser draws, and resume stays exact (the seed comes
from the checkpointed tf.data.Dataset.random). tests/tasks/test_joint_task.py and
tests/data/test_joint_input.py check image, boxes and mask agree after augmentation.

Eval batches hold the detection eval form plus "original_labels" (each image's label map at
its original size, padded with 255), as the segmentation evaluator reads them.
"""
import tensorflow as tf

from detlab.data.detection_input import DetectionParser, InputConfig, source_dataset
from detlab.data.segmentation_example import MASK_KEY
from detlab.data.segmentation_input import parse_and_batch, resize_crop_pad_labels
from detlab.data.tf_example import decode_example

NO_MASK_HINT = ("a record has no semantic map ({key}); write the built-in data with "
                "`python -m data_tools.make_shapes_dataset --semantic_maps`, or add the key "
                "to your detection records (detlab.data.segmentation_example.mask_features)")


def check_joint_config(config: InputConfig) -> None:
  """Refuses the detection input options the mask cannot follow."""
  if config.tfds_name:
    raise ValueError(f"The joint input reads TFRecords with semantic maps; tfds_name="
                     f"{config.tfds_name!r} gives no masks. Set file_pattern instead.")
  if config.augmentations or config.mosaic is not None:
    raise ValueError("The joint input supports flip + scale jitter + crop only: set "
                     "InputConfig.augmentations = [] and InputConfig.mosaic = None (the "
                     "AutoAugment/RandAugment/mosaic steps move boxes but not the mask).")


def decode_joint_example(serialized: tf.Tensor) -> dict:
  """decode_example's dict plus "labels" uint8 [H, W] (the semantic map)."""
  data = decode_example(serialized)
  encoded = tf.io.parse_single_example(
      serialized, {MASK_KEY: tf.io.FixedLenFeature((), tf.string, default_value="")})[MASK_KEY]
  tf.debugging.assert_greater(tf.strings.length(encoded), 0,
                              message=NO_MASK_HINT.format(key=MASK_KEY))
  labels = tf.io.decode_png(encoded, channels=1, dtype=tf.uint8)[:, :, 0]
  tf.debugging.assert_equal(tf.shape(data["image"])[:2], tf.shape(labels),
                            message="joint record: mask size differs from the image size")
  return {**data, "labels": labels}


class JointParser:
  """Serialized record (+ a seed [2] in training) -> DetectionParser's dict + "labels"
  [S, S] uint8 (eval: + "original_labels" [H, W] uint8)."""

  def __init__(self, detection: DetectionParser):
    check_joint_config(detection.config)
    self.detection = detection

  def __call__(self, serialized: tf.Tensor, seed: tf.Tensor | None = None) -> dict:
    data = decode_joint_example(serialized)
    c, size = self.detection.config, self.detection.anchors.image_size
    if not c.is_training:
      labels, _ = resize_crop_pad_labels(data["labels"], size, tf.constant(1.0), tf.zeros([2]))
      return {**self.detection.parse(data), "labels": labels,
              "original_labels": data["labels"]}
    draws = self.detection.draw_geometry(seed)  # drawn once, applied to both halves
    outputs = self.detection.parse(data, draws=draws)
    labels = data["labels"]
    labels = tf.cond(draws.flip, lambda: labels[:, ::-1], lambda: labels)
    labels, _ = resize_crop_pad_labels(labels, size, draws.scale, draws.crop_fraction)
    return {**outputs, "labels": labels}


def make_joint_dataset(parser: JointParser, batch_size: int,
                       input_context: tf.distribute.InputContext | None = None,
                       seed: int | None = None) -> tf.data.Dataset:
  """Batched joint examples (`batch_size` per replica), from detection_input's source."""
  config = parser.detection.config
  return parse_and_batch(source_dataset(config, input_context, seed), parser,
                         config.is_training, batch_size, seed, input_context)
