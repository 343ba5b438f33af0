"""Box-aware AutoAugment (detection policies v0-v3) and RandAugment training steps.

A step is a callable `step(image, boxes) -> (image, boxes)` on the *decoded* example, before
normalization: image uint8 [H, W, 3], boxes float32 [M, 4] [y1, x1, y2, x2] pixels of that
image. Steps keep the number and order of boxes (classes stay aligned); a box moved out of
the image ends with zero or tiny area and is dropped after the crop in DetectionParser.

Policies are the reference's (Zoph et al. 2019, "Learning Data Augmentation Strategies for
Object Detection"; tpu/models/official/detection/utils/autoaugment_utils.py), including its
hyper-parameters (translate 250 px, cutout 100 px, box-only translate 120 px, box-only cutout
50 px, bbox-cutout pad fraction 0.75). Photometric ops, level->argument maps and the per-box
helper are reused from tfm's `official.vision.ops.augment`. Not reused from it, and why:
- its geometric ops (translate/shear/rotate + `_BBox`) call `transform` with the default
  fill_mode='reflect', so `unwrap` never sees empty pixels: vacated areas get a mirror image
  of the content, i.e. objects without boxes. Here the same affine maps use fill_mode
  'constant' (grey 128, the reference's fill), and boxes are mapped exactly through the
  forward affine instead of tfm's integer-truncated corner arithmetic;
- its AutoAugment names only `detection_v0` ('v0' there is the *classification* policy,
  whose Rotate/Shear/Translate would move the image but not the boxes), and lacks the ops
  v1-v3 need (ShearX/Y_Only_BBoxes, Flip_Only_BBoxes, Equalize_Only_BBoxes,
  Cutout_Only_BBoxes, BBox_Cutout);
- its `_apply_func_with_prob` applies the box-only ops with prob x prob/3; the reference
  applies them always, with prob/3 per box.
"""
import dataclasses
import math

import gin
import tensorflow as tf
from official.vision.ops import augment as tfm_augment

MAX_LEVEL = 10.0
REPLACE = 128  # fill value of vacated pixels (reference)

POLICIES = {
    "v0": [
        [("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)],
        [("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)],
        [("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)],
        [("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)],
        [("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)],
    ],
    "v1": [
        [("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)],
        [("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)],
        [("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)],
        [("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)],
        [("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)],
        [("Color", 0.0, 0), ("ShearX_Only_BBoxes", 0.8, 4)],
        [("ShearY_Only_BBoxes", 0.8, 2), ("Flip_Only_BBoxes", 0.0, 10)],
        [("Equalize", 0.6, 10), ("TranslateX_BBox", 0.2, 2)],
        [("Color", 1.0, 10), ("TranslateY_Only_BBoxes", 0.4, 6)],
        [("Rotate_BBox", 0.8, 10), ("Contrast", 0.0, 10)],
        [("Cutout", 0.2, 2), ("Brightness", 0.8, 10)],
        [("Color", 1.0, 6), ("Equalize", 1.0, 2)],
        [("Cutout_Only_BBoxes", 0.4, 6), ("TranslateY_Only_BBoxes", 0.8, 2)],
        [("Color", 0.2, 8), ("Rotate_BBox", 0.8, 10)],
        [("Sharpness", 0.4, 4), ("TranslateY_Only_BBoxes", 0.0, 4)],
        [("Sharpness", 1.0, 4), ("SolarizeAdd", 0.4, 4)],
        [("Rotate_BBox", 1.0, 8), ("Sharpness", 0.2, 8)],
        [("ShearY_BBox", 0.6, 10), ("Equalize_Only_BBoxes", 0.6, 8)],
        [("ShearX_BBox", 0.2, 6), ("TranslateY_Only_BBoxes", 0.2, 10)],
        [("SolarizeAdd", 0.6, 8), ("Brightness", 0.8, 10)],
    ],
    "v2": [
        [("Color", 0.0, 6), ("Cutout", 0.6, 8), ("Sharpness", 0.4, 8)],
        [("Rotate_BBox", 0.4, 8), ("Sharpness", 0.4, 2), ("Rotate_BBox", 0.8, 10)],
        [("TranslateY_BBox", 1.0, 8), ("AutoContrast", 0.8, 2)],
        [("AutoContrast", 0.4, 6), ("ShearX_BBox", 0.8, 8), ("Brightness", 0.0, 10)],
        [("SolarizeAdd", 0.2, 6), ("Contrast", 0.0, 10), ("AutoContrast", 0.6, 0)],
        [("Cutout", 0.2, 0), ("Solarize", 0.8, 8), ("Color", 1.0, 4)],
        [("TranslateY_BBox", 0.0, 4), ("Equalize", 0.6, 8), ("Solarize", 0.0, 10)],
        [("TranslateY_BBox", 0.2, 2), ("ShearY_BBox", 0.8, 8), ("Rotate_BBox", 0.8, 8)],
        [("Cutout", 0.8, 8), ("Brightness", 0.8, 8), ("Cutout", 0.2, 2)],
        [("Color", 0.8, 4), ("TranslateY_BBox", 1.0, 6), ("Rotate_BBox", 0.6, 6)],
        [("Rotate_BBox", 0.6, 10), ("BBox_Cutout", 1.0, 4), ("Cutout", 0.2, 8)],
        [("Rotate_BBox", 0.0, 0), ("Equalize", 0.6, 6), ("ShearY_BBox", 0.6, 8)],
        [("Brightness", 0.8, 8), ("AutoContrast", 0.4, 2), ("Brightness", 0.2, 2)],
        [("TranslateY_BBox", 0.4, 8), ("Solarize", 0.4, 6), ("SolarizeAdd", 0.2, 10)],
        [("Contrast", 1.0, 10), ("SolarizeAdd", 0.2, 8), ("Equalize", 0.2, 4)],
    ],
    "v3": [
        [("Posterize", 0.8, 2), ("TranslateX_BBox", 1.0, 8)],
        [("BBox_Cutout", 0.2, 10), ("Sharpness", 1.0, 8)],
        [("Rotate_BBox", 0.6, 8), ("Rotate_BBox", 0.8, 10)],
        [("Equalize", 0.8, 10), ("AutoContrast", 0.2, 10)],
        [("SolarizeAdd", 0.2, 2), ("TranslateY_BBox", 0.2, 8)],
        [("Sharpness", 0.0, 2), ("Color", 0.4, 8)],
        [("Equalize", 1.0, 8), ("TranslateY_BBox", 1.0, 8)],
        [("Posterize", 0.6, 2), ("Rotate_BBox", 0.0, 10)],
        [("AutoContrast", 0.6, 0), ("Rotate_BBox", 1.0, 6)],
        [("Equalize", 0.0, 4), ("Cutout", 0.8, 10)],
        [("Brightness", 1.0, 2), ("TranslateY_BBox", 1.0, 6)],
        [("Contrast", 0.0, 2), ("ShearY_BBox", 0.8, 0)],
        [("AutoContrast", 0.8, 10), ("Contrast", 0.2, 10)],
        [("Rotate_BBox", 1.0, 10), ("Cutout", 1.0, 10)],
        [("SolarizeAdd", 0.8, 6), ("Equalize", 0.8, 8)],
    ],
}

# RandAugment's detection op list (tfm `RandAugment.build_for_detection`).
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate_BBox", "Posterize", "Solarize",
                   "Color", "Contrast", "Brightness", "Sharpness", "ShearX_BBox", "ShearY_BBox",
                   "TranslateX_BBox", "TranslateY_BBox", "Cutout", "SolarizeAdd")


# ---- geometry: one affine warp for image and boxes --------------------------------------

def _inverse_map(name: str, arg, height, width) -> tf.Tensor:
  """[a0, a1, a2, b0, b1, b2] mapping an output pixel index (x, y) to its input index."""
  arg = tf.cast(arg, tf.float32)
  one, zero = tf.ones([]), tf.zeros([])
  if name == "TranslateX":   # content moves by -arg px in x (PIL/tfm convention)
    return tf.stack([one, zero, arg, zero, one, zero])
  if name == "TranslateY":
    return tf.stack([one, zero, zero, zero, one, arg])
  if name == "ShearX":
    return tf.stack([one, arg, zero, zero, one, zero])
  if name == "ShearY":
    return tf.stack([one, zero, zero, arg, one, zero])
  if name == "Rotate":       # degrees, about the image centre (tfm's matrix)
    radians = arg * math.pi / 180.0
    cos, sin = tf.cos(radians), tf.sin(radians)
    w, h = tf.cast(width, tf.float32) - 1.0, tf.cast(height, tf.float32) - 1.0
    return tf.stack([cos, -sin, (w - (cos * w - sin * h)) / 2.0,
                     sin, cos, (h - (sin * w + cos * h)) / 2.0])
  raise ValueError(f"unknown geometric op {name!r}")


def warp_image(image: tf.Tensor, name: str, arg) -> tf.Tensor:
  """uint8 [H, W, 3] warped by op `name`; vacated pixels are REPLACE (nearest sampling)."""
  shape = tf.shape(image)
  params = _inverse_map(name, arg, shape[0], shape[1])
  transform = tf.concat([params, tf.zeros([2])], 0)[None]
  wrapped = tfm_augment.wrap(image)
  warped = tf.raw_ops.ImageProjectiveTransformV3(
      images=wrapped[None], transforms=transform, output_shape=shape[:2],
      fill_value=0.0, fill_mode="CONSTANT", interpolation="NEAREST")[0]
  return tfm_augment.unwrap(warped, [REPLACE] * 3)


def warp_boxes(boxes: tf.Tensor, name: str, arg, height, width) -> tf.Tensor:
  """Boxes [M, 4] normalized [y1, x1, y2, x2] -> the box of their 4 warped corners, clipped."""
  p = _inverse_map(name, arg, height, width)
  matrix = tf.linalg.inv(tf.reshape(tf.concat([p, [0.0, 0.0, 1.0]], 0), [3, 3]))
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  y1, x1, y2, x2 = tf.unstack(boxes * tf.stack([h, w, h, w]), axis=-1)
  # Pixel index i covers [i, i + 1); the warp maps indices, so shift by half a pixel.
  xs = tf.stack([x1, x2, x1, x2], -1) - 0.5
  ys = tf.stack([y1, y1, y2, y2], -1) - 0.5
  points = tf.stack([xs, ys, tf.ones_like(xs)], -1)           # [M, 4, 3]
  moved = tf.einsum("ij,mkj->mki", matrix, points) + 0.5       # [M, 4, 3]
  new = tf.stack([tf.reduce_min(moved[..., 1], -1), tf.reduce_min(moved[..., 0], -1),
                  tf.reduce_max(moved[..., 1], -1), tf.reduce_max(moved[..., 0], -1)], -1)
  new = tf.clip_by_value(new / tf.stack([h, w, h, w]), 0.0, 1.0)
  return tf.reshape(new, [-1, 4])


def _geometric_with_boxes(name):
  def op(image, bboxes, arg):
    shape = tf.shape(image)
    return warp_image(image, name, arg), warp_boxes(bboxes, name, arg, shape[0], shape[1])
  return op


def _box_only(image_fn):
  """Applies `image_fn` inside each box with probability prob / 3 (reference rule)."""
  def op(image, bboxes, prob, *args):
    # pylint: disable=protected-access
    return tfm_augment._apply_multi_bbox_augmentation_wrapper(
        image, bboxes, prob / 3.0, image_fn, False, *args)
  return op


def _bbox_cutout(image, bboxes, pad_fraction):
  """Cutout (grey) centred at a random pixel of one random box, pad_fraction x box size."""
  def apply():
    shape = tf.shape(image)
    size = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)
    box = tf.cast(tf.gather(bboxes, tf.random.uniform([], 0, tf.shape(bboxes)[0], tf.int32))
                  * size, tf.int32)
    half_h = tf.cast(pad_fraction * tf.cast(box[2] - box[0] + 1, tf.float32) / 2, tf.int32)
    half_w = tf.cast(pad_fraction * tf.cast(box[3] - box[1] + 1, tf.float32) / 2, tf.int32)
    cy = tf.random.uniform([], box[0], tf.maximum(box[2], box[0] + 1), tf.int32)
    cx = tf.random.uniform([], box[1], tf.maximum(box[3], box[1] + 1), tf.int32)
    rows, cols = tf.range(shape[0])[:, None], tf.range(shape[1])[None, :]
    inside = ((rows >= cy - half_h) & (rows < cy + half_h) &
              (cols >= cx - half_w) & (cols < cx + half_w))
    return tf.where(inside[..., None], tf.constant(REPLACE, image.dtype), image)
  image = tf.cond(tf.size(bboxes) > 0, apply, lambda: image)
  return image, bboxes


def _image_only(fn):
  return lambda image, bboxes, *args: (fn(image, *args), bboxes)


def _flip_left_right(image):
  return tf.image.flip_left_right(image)


def _shear_x(image, level, replace):
  del replace
  return warp_image(image, "ShearX", level)


def _shear_y(image, level, replace):
  del replace
  return warp_image(image, "ShearY", level)


def _translate_y(image, pixels, replace):
  del replace
  return warp_image(image, "TranslateY", pixels)


# name -> (fn(image, bboxes, *args) -> (image, bboxes), takes_prob)
_OPS = {
    **{name: (_image_only(getattr(tfm_augment, fn)), False) for name, fn in [
        ("AutoContrast", "autocontrast"), ("Equalize", "equalize"), ("Invert", "invert"),
        ("Posterize", "posterize"), ("Solarize", "solarize"), ("SolarizeAdd", "solarize_add"),
        ("Color", "color"), ("Contrast", "contrast"), ("Brightness", "brightness"),
        ("Sharpness", "sharpness"), ("Cutout", "cutout")]},
    "TranslateX_BBox": (_geometric_with_boxes("TranslateX"), False),
    "TranslateY_BBox": (_geometric_with_boxes("TranslateY"), False),
    "ShearX_BBox": (_geometric_with_boxes("ShearX"), False),
    "ShearY_BBox": (_geometric_with_boxes("ShearY"), False),
    "Rotate_BBox": (_geometric_with_boxes("Rotate"), False),
    "BBox_Cutout": (_bbox_cutout, False),
    "TranslateY_Only_BBoxes": (_box_only(_translate_y), True),
    "ShearX_Only_BBoxes": (_box_only(_shear_x), True),
    "ShearY_Only_BBoxes": (_box_only(_shear_y), True),
    "Flip_Only_BBoxes": (_box_only(_flip_left_right), True),
    "Equalize_Only_BBoxes": (_box_only(tfm_augment.equalize), True),
    "Cutout_Only_BBoxes": (_box_only(tfm_augment.cutout), True),
}


def _level_to_args(name: str, level: float, cutout_const: float, translate_const: float):
  """The op's arguments at `level` (0..10), reference maps; `replace` appended where used."""
  if name == "BBox_Cutout":
    return (level / MAX_LEVEL * 0.75,)
  if name in ("ShearX_Only_BBoxes", "ShearY_Only_BBoxes"):
    return tfm_augment.level_to_arg(cutout_const, translate_const)["ShearX"](level) + (REPLACE,)
  if name == "Cutout_Only_BBoxes":
    return (int(level / MAX_LEVEL * 50), REPLACE)
  if name in ("Flip_Only_BBoxes", "Equalize_Only_BBoxes"):
    return ()
  args = tfm_augment.level_to_arg(cutout_const, translate_const)[name](level)
  if name == "TranslateY_Only_BBoxes":
    args = args + (REPLACE,)
  if name in ("Cutout",):
    args = args + (REPLACE,)
  return args


def apply_op(name: str, prob, level: float, image: tf.Tensor, bboxes: tf.Tensor,
             cutout_const: float = 100.0, translate_const: float = 250.0):
  """One policy entry: image uint8 [H, W, 3], bboxes [M, 4] normalized [y1, x1, y2, x2]."""
  fn, takes_prob = _OPS[name]
  args = _level_to_args(name, level, cutout_const, translate_const)
  if takes_prob:  # the op draws per box itself; the reference always calls it
    return fn(image, bboxes, prob, *args)
  apply = tf.random.uniform([]) < prob
  return tf.cond(apply, lambda: fn(image, bboxes, *args), lambda: (image, bboxes))


def _to_normalized(image, boxes):
  shape = tf.shape(image)
  size = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)
  return tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]) / size, size


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class AutoAugment:
  """Detection AutoAugment: one random sub-policy of `policy` ('v0'..'v3') per image."""
  policy: str = "v0"

  def __post_init__(self):
    if self.policy not in POLICIES:
      raise ValueError(f"AutoAugment.policy must be one of {sorted(POLICIES)}, "
                       f"got {self.policy!r}.")

  def __call__(self, image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """image uint8 [H, W, 3]; boxes [M, 4] pixels [y1, x1, y2, x2] -> same shapes."""
    normalized, size = _to_normalized(image, boxes)
    subpolicies = POLICIES[self.policy]
    chosen = tf.random.uniform([], 0, len(subpolicies), tf.int32)

    def run(subpolicy, image_, boxes_):
      for name, prob, level in subpolicy:
        image_, boxes_ = apply_op(name, prob, level, image_, boxes_)
      return image_, boxes_

    for i, subpolicy in enumerate(subpolicies):
      image, normalized = tf.cond(
          tf.equal(chosen, i), lambda s=subpolicy, im=image, b=normalized: run(s, im, b),
          lambda im=image, b=normalized: (im, b))
    return image, tf.reshape(normalized, [-1, 4]) * size


@gin.register(module="detlab.data")
@dataclasses.dataclass(frozen=True)
class RandAugment:
  """RandAugment for detection: `num_layers` random ops at `magnitude` (0..10), each applied
  with probability U(0.2, 0.8); geometric ops move the boxes. Defaults are tfm's."""
  num_layers: int = 2
  magnitude: float = 10.0
  cutout_const: float = 40.0
  translate_const: float = 100.0

  def __call__(self, image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """image uint8 [H, W, 3]; boxes [M, 4] pixels [y1, x1, y2, x2] -> same shapes."""
    normalized, size = _to_normalized(image, boxes)
    for _ in range(self.num_layers):
      chosen = tf.random.uniform([], 0, len(RANDAUGMENT_OPS) + 1, tf.int32)  # last: identity
      prob = tf.random.uniform([], 0.2, 0.8)
      branches = [
          lambda n=name, im=image, b=normalized: apply_op(
              n, prob, self.magnitude, im, b, self.cutout_const, self.translate_const)
          for name in RANDAUGMENT_OPS]
      image, normalized = tf.switch_case(
          chosen, branches, default=lambda im=image, b=normalized: (tf.identity(im), b))
      normalized = tf.reshape(normalized, [-1, 4])
    return image, normalized * size
