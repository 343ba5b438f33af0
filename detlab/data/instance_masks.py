"""Per-instance masks in the detection input: decoded, carried through every geometric
transform, and cut into M x M training targets at each kept ground-truth box.

Records: OD-API `image/object/mask`, one 0/1 PNG per object at the image's size
(`create_coco_tfrecord --include_masks`, `create_voc_tfrecord --instance_masks`, the
built-in shapes). Turned on by `InputConfig.instance_masks = @InstanceMaskConfig()`; off,
the detection parser reads and outputs exactly what it did before.

How masks follow the geometry. The source masks are never resampled to the model's input:
each instance carries an axis-aligned map from its mask's pixels to the current image's
(`mask_affine` [M, 4] = (sy, sx, ty, tx): image = mask * s + t, s < 0 after a flip) and the
window of the current image where its mask is visible (`mask_window` [M, 4] [y1, x1, y2, x2]
pixels; outside it the object was cut by a Mosaic quadrant or the crop). Flip, Mosaic and
resize + scale jitter + crop each update both (exact arithmetic, no pixels touched); the
training target of box b (model-input pixels) is then the source mask sampled once,
bilinearly, at the centres of b's M x M cells mapped back through the affine, and 0 at cells
outside the window. This is the Model Garden Mask R-CNN parser's approach
(official/vision/dataloaders/maskrcnn_input.py crops the original masks at the boxes mapped
back to the original image, with tf.image.crop_and_resize) extended to Mosaic and the crop
window, with cell centres sampled exactly (tfm normalises boxes by the image size, which
samples crop_and_resize's corner grid: up to half a pixel off). A full-size mask per
instance at the model's resolution (tfm `preprocess_ops.resize_and_crop_masks`) is never
built: 100 instances at 1024^2 would be 400 MB per example in float32.

Not used from the Model Garden, and why: `modeling.layers.mask_sampler` picks foreground RPN
proposals matched to ground truth (two-stage Mask R-CNN) and crops with
`spatial_transform_ops.crop_mask_in_target_box`, which needs every ground-truth mask already at
the model's resolution inside the batch; here the RoIs are the ground-truth boxes themselves
(one stage: the mask branch trains from step 1), so there is nothing to sample, and the
targets are cut here, in the input pipeline, leaving the batch with [K, M, M] only.

Box jitter is stateless (a per-example seed) so resume stays exact; tfm's
`box_ops.jitter_boxes` draws from the stateful tf.random.normal, hence not reused (same
formula: centre += N(0, s) x size, size x= exp(N(0, s))).

AutoAugment/RandAugment steps warp only the image and boxes (and their box-only ops move
pixels inside boxes), so the parser refuses them with masks on (InputConfig.augmentations).
"""
import dataclasses

import gin
import tensorflow as tf

MASK_KEY = "image/object/mask"
GEOMETRY_KEYS = ("masks", "mask_affine", "mask_window")
NO_MASKS_HINT = ("the record has {masks} instance mask(s) for {boxes} box(es) ({key}). "
                 "Write the records with masks: `python -m data_tools.create_coco_tfrecord "
                 "--include_masks ...`, `python -m data_tools.create_voc_tfrecord "
                 "--instance_masks ...` or `python -m data_tools.make_shapes_dataset`.")


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class InstanceMaskConfig:
  """Instance masks in the detection input (`InputConfig.instance_masks`).

  size: M, the side of each training target (box-relative, Mask R-CNN's 28).
  box_jitter: std of the stateless box noise on the training RoIs (0: the ground-truth boxes
    themselves), relative to the box size (tfm `box_ops.jitter_boxes`' noise_scale).
  eval_masks: eval batches carry "gt_masks" [M, H, W] uint8 at the original resolution (the
    evaluator's ground truth when no annotation file is given; off saves memory when one is).
  """
  size: int = 28
  box_jitter: float = 0.0
  eval_masks: bool = True

  def __post_init__(self):
    if self.size < 1:
      raise ValueError(f"InstanceMaskConfig.size must be >= 1, got {self.size}.")
    if self.box_jitter < 0:
      raise ValueError(f"InstanceMaskConfig.box_jitter must be >= 0, got {self.box_jitter}.")


def decode_masks(serialized: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                 count: tf.Tensor) -> tf.Tensor:
  """The record's instance masks, uint8 [count, height, width] 0/1; an error naming the fix
  when the record has not one mask per box or a mask is not the image's size."""
  pngs = tf.io.parse_single_example(
      serialized, {MASK_KEY: tf.io.VarLenFeature(tf.string)})[MASK_KEY]
  pngs = tf.sparse.to_dense(pngs)
  tf.debugging.assert_equal(
      tf.size(pngs), count,
      message=NO_MASKS_HINT.format(masks="a different number of", boxes="its", key=MASK_KEY))

  def one(png):
    mask = tf.io.decode_png(png, channels=1)[:, :, 0]
    tf.debugging.assert_equal(tf.shape(mask), tf.stack([height, width]),
                              message="an instance mask's size differs from the image size")
    return tf.minimum(mask, 1)  # 0/1 (a 0/255 PNG reads as 1 too)

  masks = tf.cond(  # map_fn over no element gives a shape-(0,) tensor: an image of no object
      tf.size(pngs) > 0,
      lambda: tf.map_fn(one, pngs, fn_output_signature=tf.TensorSpec([None, None], tf.uint8)),
      lambda: tf.zeros(tf.stack([0, height, width]), tf.uint8))
  return tf.reshape(masks, tf.stack([count, height, width]))


def identity_geometry(masks: tf.Tensor) -> dict:
  """The decoded example's mask keys: masks [M, H, W] in the image's own pixels, visible
  everywhere."""
  shape = tf.shape(masks)
  count, size = shape[0], tf.cast(shape[1:3], tf.float32)
  return {"masks": masks,
          "mask_affine": tf.tile([[1.0, 1.0, 0.0, 0.0]], [count, 1]),
          "mask_window": tf.tile(tf.concat([[0.0, 0.0], size], 0)[None], [count, 1])}


def decode_example_with_masks(serialized: tf.Tensor) -> dict:
  """decode_example's dict plus "masks" uint8 [M, H, W], "mask_affine" and "mask_window"."""
  from detlab.data.tf_example import decode_example  # pylint: disable=import-outside-toplevel
  data = decode_example(serialized)
  masks = decode_masks(serialized, data["height"], data["width"], tf.shape(data["classes"])[0])
  return {**data, **identity_geometry(masks)}


def compose(affine: tf.Tensor, window: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor,
            bounds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """The geometry after the current image's pixel p moves to p * scale + offset.

  affine, window: [M, 4] as in the module docstring; scale, offset: [2] (y, x); bounds: [4]
  [y1, x1, y2, x2] of the new image where any pixel is visible (the window is cut to it).
  """
  scale2, offset2 = tf.tile(scale, [2]), tf.tile(offset, [2])
  affine = tf.concat([affine[:, :2] * scale, affine[:, 2:] * scale + offset], -1)
  moved = window * scale2 + offset2
  # A negative scale swaps the window's edges.
  low = tf.minimum(moved[:, :2], moved[:, 2:])
  high = tf.maximum(moved[:, :2], moved[:, 2:])
  window = tf.concat([tf.maximum(low, bounds[:2]), tf.minimum(high, bounds[2:])], -1)
  return affine, window


def flip_geometry(affine: tf.Tensor, window: tf.Tensor, width: tf.Tensor,
                  flip: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Geometry after detection_input.horizontal_flip of an image `width` pixels wide."""
  width = tf.cast(width, tf.float32)
  flipped = compose(affine, window, tf.constant([1.0, -1.0]), tf.stack([0.0, width]),
                    tf.stack([-1e30, -1e30, 1e30, 1e30]))
  return (tf.where(flip, flipped[0], affine), tf.where(flip, flipped[1], window))


def resize_crop_geometry(affine: tf.Tensor, window: tf.Tensor,
                         image_info: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Geometry after jitter_resize_and_crop / tfm resize_and_crop_image, from its image_info
  [[orig h, w], [out h, w], [scale y, x], [offset y, x]]: p -> p * scale - offset, visible
  inside the output and the resized image."""
  scale, offset = image_info[2], image_info[3]
  visible = tf.minimum(image_info[1], image_info[0] * scale - offset)
  return compose(affine, window, scale, -offset, tf.concat([[0.0, 0.0], visible], 0))


def jitter_boxes(boxes: tf.Tensor, noise: float, seed: tf.Tensor,
                 size: int) -> tf.Tensor:
  """[K, 4] [y1, x1, y2, x2] pixels moved by N(0, noise) x their size (centre) and scaled by
  exp(N(0, noise)), clipped to the size x size image; stateless from `seed` (int64 [2])."""
  if noise <= 0:
    return boxes
  draws = tf.random.stateless_normal(tf.shape(boxes), seed, stddev=noise)
  hw = boxes[:, 2:] - boxes[:, :2]
  centre = (boxes[:, 2:] + boxes[:, :2]) / 2 + draws[:, :2] * hw
  hw = hw * tf.exp(draws[:, 2:])
  jittered = tf.clip_by_value(tf.concat([centre - hw / 2, centre + hw / 2], -1), 0.0,
                              float(size))
  # A box pushed out of the image keeps its ground truth.
  empty = tf.reduce_any(jittered[:, 2:] - jittered[:, :2] < 1.0, -1, keepdims=True)
  return tf.where(empty, boxes, jittered)


def mask_targets(masks: tf.Tensor, affine: tf.Tensor, window: tf.Tensor, boxes: tf.Tensor,
                 size: int) -> tf.Tensor:
  """float32 [K, size, size] in [0, 1]: source mask k (masks uint8 [K, H, W]) sampled
  bilinearly at the centres of box k's size x size cells (boxes [K, 4] [y1, x1, y2, x2]
  current-image pixels, pixel i covering [i, i + 1)), through affine k; 0 outside window k.
  """
  count = tf.shape(masks)[0]
  cells = (tf.range(size, dtype=tf.float32) + 0.5) / size            # [size]
  ys = boxes[:, 0:1] + cells * (boxes[:, 2:3] - boxes[:, 0:1])        # [K, size] image px
  xs = boxes[:, 1:2] + cells * (boxes[:, 3:4] - boxes[:, 1:2])
  inside_y = (ys >= window[:, 0:1]) & (ys < window[:, 2:3])
  inside_x = (xs >= window[:, 1:2]) & (xs < window[:, 3:4])
  # Mask pixel index (its centre at index + 0.5) of the first and last cell centre; one
  # pixel of zeros around the mask lets crop_and_resize fade out at its edges.
  first_y = (ys[:, 0] - affine[:, 2]) / affine[:, 0] - 0.5 + 1.0
  last_y = (ys[:, -1] - affine[:, 2]) / affine[:, 0] - 0.5 + 1.0
  first_x = (xs[:, 0] - affine[:, 3]) / affine[:, 1] - 0.5 + 1.0
  last_x = (xs[:, -1] - affine[:, 3]) / affine[:, 1] - 0.5 + 1.0
  padded = tf.pad(masks, [[0, 0], [1, 1], [1, 1]])[..., None]
  span = tf.cast(tf.maximum(tf.shape(padded)[1:3] - 1, 1), tf.float32)  # crop_and_resize's
  normalized = tf.stack([first_y / span[0], first_x / span[1],          # corner grid
                         last_y / span[0], last_x / span[1]], -1)
  if size == 1:  # crop_and_resize samples a 1 x 1 crop at the box centre
    normalized = tf.tile((normalized[:, :2] + normalized[:, 2:]) / 2, [1, 2])
  crops = tf.image.crop_and_resize(padded, normalized, tf.range(count), [size, size],
                                   extrapolation_value=0.0)[..., 0]
  inside = tf.cast(inside_y[:, :, None] & inside_x[:, None, :], tf.float32)
  return tf.reshape(crops * inside, [-1, size, size])


def training_mask_outputs(data: dict, image_info: tf.Tensor, flip: tf.Tensor,
                          flip_width: tf.Tensor, instances: tf.Tensor, boxes: tf.Tensor,
                          classes: tf.Tensor, config: InstanceMaskConfig, max_instances: int,
                          image_size: int, seed: tf.Tensor | None) -> dict:
  """The training batch's mask keys, each padded to `max_instances` rows:
  "mask_boxes" float32 [K, 4] (model-input pixels, jittered: the RoIs the mask branch
  crops), "mask_classes" int32 [K] (class index; -1 pad), "mask_targets" float32 [K, M, M].

  data: the decoded example (mask keys in its own pixels); instances [k]: which of data's
  instances were kept, in the order of `boxes` [k, 4] (model-input pixels) and `classes`."""
  affine, window = flip_geometry(data["mask_affine"], data["mask_window"], flip_width, flip)
  affine, window = resize_crop_geometry(affine, window, image_info)
  if seed is None:
    seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
  # Folded in, not split off: the flip/scale/crop draws stay those of the plain parser.
  rois = jitter_boxes(boxes, config.box_jitter,
                      tf.random.experimental.stateless_fold_in(seed, 26), image_size)
  targets = mask_targets(tf.gather(data["masks"], instances), tf.gather(affine, instances),
                         tf.gather(window, instances), rois, config.size)
  pad = max_instances - tf.shape(instances)[0]
  return {
      "mask_boxes": tf.ensure_shape(tf.pad(rois, [[0, pad], [0, 0]]), [max_instances, 4]),
      "mask_classes": tf.ensure_shape(tf.pad(classes, [[0, pad]], constant_values=-1),
                                      [max_instances]),
      "mask_targets": tf.ensure_shape(tf.pad(targets, [[0, pad], [0, 0], [0, 0]]),
                                      [max_instances, config.size, config.size]),
  }
