"""The built-in data set: deterministic synthetic scenes of shapes on cluttered backgrounds.

Each image (random size, 160-256 px a side) holds 1-6 objects of 4 classes (ellipse,
rectangle, triangle, cross) of varied size, aspect, colour and rotation that may overlap, on a
colour gradient with lines, dots and noise. Annotations: visible-extent boxes, visible-pixel
masks and areas, COCO-style category ids 1..4. Image i depends only on (seed, i).
"""
import math

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = {1: "ellipse", 2: "rectangle", 3: "triangle", 4: "cross"}
MIN_SIDE, MAX_SIDE = 160, 256
MAX_OBJECTS = 6
MIN_VISIBLE_FRACTION = 0.5


def _rotate(points: np.ndarray, angle: float, centre) -> list[tuple[float, float]]:
  c, s = math.cos(angle), math.sin(angle)
  rotated = points @ np.array([[c, s], [-s, c]]) + np.asarray(centre)
  return [tuple(p) for p in rotated]


def _shape_polygon(category: int, centre, half_w: float, half_h: float, angle: float,
                   rng: np.random.RandomState):
  """Polygon (list of (x, y)) of a shape; ellipses are returned as None (drawn natively)."""
  if category == 2:
    pts = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
  elif category == 3:
    apex = rng.uniform(-0.5, 0.5) * half_w
    pts = np.array([[apex, -half_h], [half_w, half_h], [-half_w, half_h]])
  elif category == 4:
    t_w, t_h = half_w * 0.33, half_h * 0.33
    pts = np.array([[-t_w, -half_h], [t_w, -half_h], [t_w, -t_h], [half_w, -t_h],
                    [half_w, t_h], [t_w, t_h], [t_w, half_h], [-t_w, half_h], [-t_w, t_h],
                    [-half_w, t_h], [-half_w, -t_h], [-t_w, -t_h]])
  else:
    return None
  return _rotate(pts, angle, centre)


def _background(rng, height: int, width: int) -> Image.Image:
  top, bottom = rng.uniform(40, 215, size=(2, 3))
  ramp = np.linspace(0.0, 1.0, height)[:, None, None]
  image = (top * (1 - ramp) + bottom * ramp) * np.ones((height, width, 3))
  canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  for _ in range(rng.randint(15, 40)):  # clutter: thin lines and small dots
    colour = tuple(int(v) for v in rng.randint(0, 256, 3))
    if rng.rand() < 0.5:
      x0, y0, x1, y1 = rng.uniform(0, 1, 4) * [width, height, width, height]
      draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.randint(1, 3)))
    else:
      x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 4)
      draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
  return canvas


def _box_iou(a, b) -> float:
  inter_h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  inter_w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = inter_h * inter_w
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def render_scene(seed: int, index: int) -> dict:
  """Renders image `index` of the data set with `seed`.

  Returns {"image" uint8 [H, W, 3], "boxes" [M, 4] float32 [y1, x1, y2, x2] pixels of the
  visible extent, "category_ids" [M] int, "masks" [M, H, W] uint8 (visible pixels),
  "areas" [M] float32 (visible pixels)}.
  """
  rng = np.random.RandomState([seed, index])
  height, width = rng.randint(MIN_SIDE, MAX_SIDE + 1, size=2)
  canvas = _background(rng, height, width)
  draw = ImageDraw.Draw(canvas)
  placed, full_masks, categories = [], [], []
  for _ in range(rng.randint(1, MAX_OBJECTS + 1)):
    for _attempt in range(10):
      size = rng.uniform(0.15, 0.5) * min(height, width)
      aspect = math.exp(rng.uniform(-0.6, 0.6))
      half_w, half_h = size * math.sqrt(aspect) / 2, size / math.sqrt(aspect) / 2
      cx, cy = rng.uniform(half_w, width - half_w), rng.uniform(half_h, height - half_h)
      box = (cy - half_h, cx - half_w, cy + half_h, cx + half_w)
      if all(_box_iou(box, other) < 0.3 for other in placed):
        break
    else:
      continue
    category = int(rng.randint(1, len(CATEGORIES) + 1))
    angle = rng.uniform(-0.35, 0.35)
    colour = tuple(int(v) for v in rng.randint(0, 256, 3))
    mask_image = Image.new("L", (int(width), int(height)), 0)
    mask_draw = ImageDraw.Draw(mask_image)
    polygon = _shape_polygon(category, (cx, cy), half_w, half_h, angle, rng)
    for target, fill in ((draw, colour), (mask_draw, 1)):
      if polygon is None:
        target.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=fill)
      else:
        target.polygon(polygon, fill=fill)
    placed.append(box)
    full_masks.append(np.asarray(mask_image, np.uint8))
    categories.append(category)

  image = np.asarray(canvas, np.float32)
  image += rng.normal(0.0, 6.0, image.shape)
  image = np.clip(image, 0, 255).astype(np.uint8)

  boxes, masks, areas, kept = [], [], [], []
  occluder = np.zeros((height, width), bool)
  for i in range(len(full_masks) - 1, -1, -1):  # later objects are on top
    visible = full_masks[i].astype(bool) & ~occluder
    occluder |= full_masks[i].astype(bool)
    full_area = full_masks[i].sum()
    if full_area == 0 or visible.sum() < MIN_VISIBLE_FRACTION * full_area:
      continue
    ys, xs = np.nonzero(visible)
    boxes.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    masks.append(visible.astype(np.uint8))
    areas.append(float(visible.sum()))
    kept.append(categories[i])
  order = np.argsort(np.arange(len(kept)))[::-1]  # back to drawing order
  return {
      "image": image,
      "boxes": np.asarray(boxes, np.float32).reshape(-1, 4)[order],
      "category_ids": np.asarray(kept, np.int64)[order],
      "masks": np.asarray(masks, np.uint8).reshape(-1, height, width)[order],
      "areas": np.asarray(areas, np.float32)[order],
  }
