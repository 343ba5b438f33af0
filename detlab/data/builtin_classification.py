"""The built-in classification data set: one shape per image on clutter, 10 classes.

Each 64x64 image shows one shape (ellipse, rectangle, triangle, cross -- the polygons of the
built-in detection set -- star, hexagon, ring, chevron, L-shape, semicircle) of random colour,
size (45-85 % of the side), aspect, tilt (within +-25 degrees) and position, over a colour gradient with
thin lines and dots (the detection set's clutter, thinned for 64 px) and at most one small
distractor shape of any class. Colour, place and pose carry no class information, so a
linear classifier on raw pixels stays near chance (tests/data_tools/
test_make_classification_dataset.py) while a CNN learns the shapes. Image i depends only on
(seed, i); classes cycle (label = i % 10).

Why the tilt is bounded: with any rotation (0-360 degrees) a network must learn rotation-
invariant shape features from the few thousand images of a demo, and it does not in a few
epochs (measured: a small CNN at 0.2 validation top-1 after 600 steps, 0.62 with upright
shapes; EfficientNet-B0 at 0.24 after 750). Position, size, colour and clutter still defeat a
linear classifier.

"""
import math

import numpy as np
from PIL import Image, ImageDraw

from detlab.data.builtin_shapes import _rotate, _shape_polygon

CLASSES = ("ellipse", "rectangle", "triangle", "cross", "star", "hexagon", "ring", "chevron",
           "lshape", "semicircle")
IMAGE_SIZE = 64
MAX_TILT = math.radians(25)  # the main shape's rotation range (see the module docstring)
_DETECTION_IDS = {"rectangle": 2, "triangle": 3, "cross": 4}  # builtin_shapes categories


def _polygon(name: str, centre, half_w: float, half_h: float, angle: float, rng):
  """The outline (list of (x, y)) of a polygonal class; None for the drawn ones."""
  if name in _DETECTION_IDS:
    return _shape_polygon(_DETECTION_IDS[name], centre, half_w, half_h, angle, rng)
  unit = {
      "star": [(math.sin(k * math.pi / 5) * (1 if k % 2 == 0 else 0.45),
                -math.cos(k * math.pi / 5) * (1 if k % 2 == 0 else 0.45)) for k in range(10)],
      "hexagon": [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)],
      "chevron": [(-1, -1), (0, 0.1), (1, -1), (1, -0.3), (0, 1), (-1, -0.3)],
      "lshape": [(-1, -1), (-0.3, -1), (-0.3, 0.4), (1, 0.4), (1, 1), (-1, 1)],
  }.get(name)
  if unit is None:
    return None
  return _rotate(np.array(unit) * [half_w, half_h], angle, centre)


def _draw_shape(canvas: Image.Image, name: str, centre, half_w: float, half_h: float,
                angle: float, colour: tuple, rng) -> None:
  draw = ImageDraw.Draw(canvas)
  points = _polygon(name, centre, half_w, half_h, angle, rng)
  if points is not None:
    draw.polygon(points, fill=colour)
    return
  # Ellipse, ring and semicircle: drawn axis-aligned on a layer, then rotated into place.
  side = int(2 * max(half_w, half_h)) + 4
  layer = Image.new("L", (side, side), 0)
  layer_draw = ImageDraw.Draw(layer)
  box = [side / 2 - half_w, side / 2 - half_h, side / 2 + half_w, side / 2 + half_h]
  if name == "semicircle":
    layer_draw.pieslice(box, 0, 180, fill=255)
  else:
    layer_draw.ellipse(box, fill=255)
    if name == "ring":
      inner = [side / 2 - 0.55 * half_w, side / 2 - 0.55 * half_h,
               side / 2 + 0.55 * half_w, side / 2 + 0.55 * half_h]
      layer_draw.ellipse(inner, fill=0)
  layer = layer.rotate(math.degrees(angle), resample=Image.BILINEAR)
  solid = Image.new("RGB", layer.size, colour)
  canvas.paste(solid, (int(centre[0] - side / 2), int(centre[1] - side / 2)), layer)


def _background(rng, size: int) -> Image.Image:
  """The detection set's colour gradient with its kind of clutter (lines, dots), thinned for
  64 px images (its 15-40 items are sized for 160-256 px scenes and bury a 64 px shape)."""
  top, bottom = rng.uniform(40, 215, size=(2, 3))
  ramp = np.linspace(0.0, 1.0, size)[:, None, None]
  canvas = Image.fromarray(np.clip((top * (1 - ramp) + bottom * ramp) * np.ones((size, size, 3)),
                                   0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  for _ in range(rng.randint(4, 11)):
    colour = _random_colour(rng)
    if rng.rand() < 0.5:
      draw.line([tuple(rng.uniform(0, size, 2)), tuple(rng.uniform(0, size, 2))], fill=colour,
                width=1)
    else:
      x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.5, 2)
      draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
  return canvas


def _random_colour(rng) -> tuple:
  return tuple(int(v) for v in rng.randint(0, 256, 3))


def render_example(seed: int, index: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, int]:
  """(image uint8 [size, size, 3], label in 0..9) of example `index`."""
  rng = np.random.RandomState([seed, index])
  label = index % len(CLASSES)
  canvas = _background(rng, size)
  for _ in range(rng.randint(0, 2)):  # a small distractor of any class
    half = rng.uniform(0.06, 0.12) * size
    _draw_shape(canvas, CLASSES[rng.randint(len(CLASSES))], rng.uniform(0, size, 2), half,
                half, rng.uniform(0, 2 * math.pi), _random_colour(rng), rng)
  extent = rng.uniform(0.45, 0.85) * size
  aspect = math.exp(rng.uniform(-0.4, 0.4))
  half_w, half_h = extent * math.sqrt(aspect) / 2, extent / math.sqrt(aspect) / 2
  reach = max(half_w, half_h)
  centre = rng.uniform(reach, size - reach, 2) if reach < size / 2 else (size / 2, size / 2)
  # A colour that stands out from the background around the shape (L1 distance >= 150).
  x0, y0 = (int(max(0, c - reach)) for c in centre)
  around = np.asarray(canvas, np.float32)[y0:y0 + int(2 * reach) + 1,
                                          x0:x0 + int(2 * reach) + 1].reshape(-1, 3).mean(0)
  colour = _random_colour(rng)
  for _ in range(20):
    if np.abs(np.array(colour) - around).sum() >= 150:
      break
    colour = _random_colour(rng)
  _draw_shape(canvas, CLASSES[label], centre, half_w, half_h,
              rng.uniform(-MAX_TILT, MAX_TILT), colour, rng)
  return np.asarray(canvas, np.uint8), label
