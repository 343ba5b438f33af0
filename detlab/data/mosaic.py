"""Mosaic (YOLOv4): four decoded examples stitched 2 x 2 around a random centre.

Written here rather than reusing tfm's `official.projects.yolo.ops.mosaic.Mosaic`: that op
consumes the YOLO decoder's dict (normalized boxes, its own keys) and carries its own
letter-box, crop and affine pipeline, which would duplicate DetectionParser's
resize + scale jitter + crop. Here the mosaic is only the stitch; the usual transforms follow.

Layout (ultralytics/YOLOv5 `load_mosaic`): a canvas of 2S x 2S (S = `size`), centre (yc, xc)
drawn from U(S/2, 3S/2); each image is resized keeping its aspect ratio so its longer side is
S and placed in one quadrant touching the centre (top-left, top-right, bottom-left,
bottom-right), cut at the canvas edge. Boxes ([y1, x1, y2, x2] pixels) are scaled, shifted,
clipped to the visible part and dropped when empty. Uncovered canvas is the backbone input
convention's mean colour (`InputConvention.mean_pixel`), which the parser's normalization,
applied after the mosaic, takes to 0 (the padding convention of the pipeline) up to uint8
rounding: within 0.5 / std (0.004 for the [-1, 1] convention, whose mean 127.5 is no uint8).

Instance masks (examples holding instance_masks' "masks", "mask_affine", "mask_window") are
not pasted into the canvas: each instance's map to canvas pixels is composed with its
image's resize + shift and its window cut to the image's quadrant, and the source masks are
padded to the largest of the four and stacked (instance_masks samples them at the end).
"""
import dataclasses
from typing import Callable

import gin
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.data import instance_masks

KEYS = ("boxes", "classes", "is_crowd", "areas")


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class Mosaic:
  """Mosaic with probability `prob` per training image; `size` 0 = the model's image size."""
  prob: float = 0.5
  size: int = 0


def _quadrant(k: int, yc, xc, h, w, canvas):
  """Canvas region [y1, x1, y2, x2] and source crop for quadrant k of an h x w image."""
  if k == 0:
    y1, x1, y2, x2 = tf.maximum(yc - h, 0), tf.maximum(xc - w, 0), yc, xc
    sy, sx = h - (y2 - y1), w - (x2 - x1)
  elif k == 1:
    y1, x1, y2, x2 = tf.maximum(yc - h, 0), xc, yc, tf.minimum(xc + w, canvas)
    sy, sx = h - (y2 - y1), 0
  elif k == 2:
    y1, x1, y2, x2 = yc, tf.maximum(xc - w, 0), tf.minimum(yc + h, canvas), xc
    sy, sx = 0, w - (x2 - x1)
  else:
    y1, x1, y2, x2 = yc, xc, tf.minimum(yc + h, canvas), tf.minimum(xc + w, canvas)
    sy, sx = 0, 0
  return (y1, x1, y2, x2), (sy, sx)


def mosaic(examples: list[dict], size: int, centre: tuple | None = None,
           fill: tuple[int, int, int] = IMAGENET_MEAN_STD.mean_pixel) -> dict:
  """Stitches four decoded examples (decode_example's dict) into one of 2*size x 2*size.

  examples: four dicts with "image" uint8 [H_i, W_i, 3], "boxes" [M_i, 4] pixels
  [y1, x1, y2, x2], "classes", "is_crowd", "areas" [M_i]; `centre` (yc, xc) int pixels of the
  canvas, random when None; `fill` the uint8 colour of uncovered canvas (the input
  convention's `mean_pixel`). Returns the same dict layout for the canvas (source_id of the
  first example); areas are rescaled by the resize factor and not reduced by clipping.
  """
  canvas_size = 2 * size
  if centre is None:
    yc = tf.random.uniform([], size // 2, 3 * size // 2, tf.int32)
    xc = tf.random.uniform([], size // 2, 3 * size // 2, tf.int32)
  else:
    yc, xc = tf.constant(centre[0], tf.int32), tf.constant(centre[1], tf.int32)
  canvas = tf.zeros([canvas_size, canvas_size, 3], tf.int32)
  covered = tf.zeros([canvas_size, canvas_size, 1], tf.int32)
  with_masks = "masks" in examples[0]
  parts = {key: [] for key in KEYS + (instance_masks.GEOMETRY_KEYS if with_masks else ())}
  for k, example in enumerate(examples):
    image = example["image"]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_max(shape)
    new_hw = tf.cast(tf.round(shape * scale), tf.int32)
    h, w = new_hw[0], new_hw[1]
    resized = tf.cast(tf.round(tf.image.resize(image, new_hw)), tf.int32)
    (y1, x1, y2, x2), (sy, sx) = _quadrant(k, yc, xc, h, w, canvas_size)
    patch = resized[sy:sy + (y2 - y1), sx:sx + (x2 - x1)]
    ones = tf.ones_like(patch[..., :1])
    canvas += tf.image.pad_to_bounding_box(patch, y1, x1, canvas_size, canvas_size)
    covered += tf.image.pad_to_bounding_box(ones, y1, x1, canvas_size, canvas_size)
    # Box pixels: the image's pixel p lands at p * (new / old) - source offset + region origin.
    factor = tf.cast(new_hw, tf.float32) / shape
    offset = tf.cast(tf.stack([y1 - sy, x1 - sx]), tf.float32)
    boxes = example["boxes"] * tf.tile(factor, [2]) + tf.tile(offset, [2])
    low = tf.cast(tf.stack([y1, x1, y1, x1]), tf.float32)
    high = tf.cast(tf.stack([y2, x2, y2, x2]), tf.float32)
    boxes = tf.minimum(tf.maximum(boxes, low), high)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    parts["boxes"].append(tf.boolean_mask(boxes, keep))
    parts["classes"].append(tf.boolean_mask(example["classes"], keep))
    parts["is_crowd"].append(tf.boolean_mask(example["is_crowd"], keep))
    parts["areas"].append(tf.boolean_mask(example["areas"] * factor[0] * factor[1], keep))
    if with_masks:
      affine, window = instance_masks.compose(
          example["mask_affine"], example["mask_window"], factor, offset[:2],
          tf.cast(tf.stack([y1, x1, y2, x2]), tf.float32))
      parts["masks"].append(tf.boolean_mask(example["masks"], keep))
      parts["mask_affine"].append(tf.boolean_mask(affine, keep))
      parts["mask_window"].append(tf.boolean_mask(window, keep))
  canvas = tf.where(covered > 0, canvas, tf.constant(fill, tf.int32))
  if with_masks:  # one stack: each image's masks padded to the largest height and width
    largest = tf.reduce_max(tf.stack([tf.shape(m)[1:3] for m in parts["masks"]]), 0)
    parts["masks"] = [tf.pad(m, [[0, 0], [0, largest[0] - tf.shape(m)[1]],
                                 [0, largest[1] - tf.shape(m)[2]]]) for m in parts["masks"]]
  out = {key: tf.concat(values, 0) for key, values in parts.items()}
  out["boxes"] = tf.reshape(out["boxes"], [-1, 4])
  out.update(image=tf.cast(canvas, tf.uint8), source_id=examples[0]["source_id"],
             height=tf.constant(canvas_size), width=tf.constant(canvas_size))
  return out


def _unpad(batch: dict, i: int) -> dict:
  """Example i of a padded_batch of decoded dicts, cut back to its own size and boxes."""
  count = tf.reduce_sum(tf.cast(batch["classes"][i] > 0, tf.int32))  # ids >= 1; pad is 0
  example = {key: batch[key][i][:count] for key in KEYS}
  if "masks" in batch:  # each mask is its image's size
    example["masks"] = batch["masks"][i][:count, :batch["height"][i], :batch["width"][i]]
    example["mask_affine"] = batch["mask_affine"][i][:count]
    example["mask_window"] = batch["mask_window"][i][:count]
  example["image"] = batch["image"][i][:batch["height"][i], :batch["width"][i]]
  example["source_id"] = batch["source_id"][i]
  return example


def _select(example: dict) -> dict:
  keys = KEYS + ("image", "source_id", "height", "width")
  return {key: example[key] for key in keys + tuple(
      k for k in instance_masks.GEOMETRY_KEYS if k in example)}


def mosaic_dataset(make_decoded: Callable[[int | None], tf.data.Dataset], config: Mosaic,
                   size: int, seed: int | None = None,
                   convention: InputConvention | None = None) -> tf.data.Dataset:
  """An infinite stream of decoded dicts of which a fraction `prob` are mosaics.

  `make_decoded(seed)` builds an infinite, shuffled stream of decoded dicts. Mosaics come
  from a second such stream (another seed) grouped by 4 (padded_batch, then each member cut
  back to its own size); `sample_from_datasets` mixes it with the plain stream, so no
  example is decoded for nothing. `convention`: the backbone's input normalization that
  follows (None: ImageNet's), whose mean colour fills uncovered canvas.
  """
  size = config.size or size
  plain = make_decoded(seed).map(_select)
  if config.prob <= 0:
    return plain
  groups = make_decoded(None if seed is None else seed + 1).map(_select).padded_batch(
      4, drop_remainder=True)
  fill = (convention or IMAGENET_MEAN_STD).mean_pixel
  mosaics = groups.map(lambda batch: mosaic([_unpad(batch, i) for i in range(4)], size,
                                            fill=fill),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None)
  if config.prob >= 1:
    return mosaics
  return tf.data.Dataset.sample_from_datasets(
      [plain, mosaics], weights=[1.0 - config.prob, config.prob], seed=seed,
      stop_on_empty_dataset=True)
