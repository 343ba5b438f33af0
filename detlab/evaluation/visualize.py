"""The pictures a user opens, for every task: detection grids (with masks for instance
segmentation), classification grids, segmentation rows, and the joint task's stack of them.

Every picture upscales small images so that their shorter side is at least `MIN_SIZE` pixels
(never downscales a large one), writes in a font sized to the tile, says in a header what its
colours mean (for detection: the score threshold of the boxes drawn), and keeps labels
readable: a detection label is never drawn over another label nor outside its tile (one with
no room left is dropped, and the header counts it); a caption is wrapped or shortened to its
tile's width. PNGs are written through `detlab.io` (any tf.io.gfile path: local, gs://, ram://).
"""
import functools
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow as tf

from detlab import io as detlab_io

MIN_SIZE = 320  # shorter side of every tile, in pixels, after upscaling
GAP = 6  # pixels between tiles
BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)
GROUND_TRUTH = (0, 255, 0)
PREDICTION = (255, 40, 40)
LABEL_FILL = (150, 0, 0)  # behind a prediction's white 'name score' label
RIGHT = (90, 235, 90)
WRONG = (255, 80, 80)
IGNORE_LABEL = 255


# ---------------------------------------------------------------------------------- text

@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont:
  """PIL's built-in scalable font at `size` pixels (its bitmap font where PIL lacks FreeType)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):  # an old PIL, or one built without FreeType
    return ImageFont.load_default()


def font_size(short_side: int) -> int:
  """14 px on a 320-px tile, in proportion on larger ones (within 12..40)."""
  return int(np.clip(round(14 * short_side / MIN_SIZE), 12, 40))


def text_width(text: str, face) -> int:
  return int(np.ceil(face.getbbox(text)[2])) if text else 0


def _line_box(face) -> tuple[int, int]:
  """(top, bottom) of a line of text relative to where it is drawn: 'A' reaches the top,
  'g' and 'y' the bottom."""
  return int(face.getbbox("A")[1]), int(np.ceil(face.getbbox("Agjy")[3]))


def line_height(face) -> int:
  top, bottom = _line_box(face)
  return bottom - top


def draw_line(draw: ImageDraw.ImageDraw, xy, text: str, face, fill) -> None:
  """`text` with its capital letters' top at y = xy[1]."""
  draw.text((xy[0], xy[1] - _line_box(face)[0]), text, font=face, fill=fill)


def shorten(text: str, face, width: int) -> str:
  """`text`, cut and ended with '…' where it is wider than `width` pixels."""
  if text_width(text, face) <= width:
    return text
  while text and text_width(text + "…", face) > width:
    text = text[:-1]
  return text + "…" if text else ""


def wrap(text: str, face, width: int, max_lines: int = 3) -> list[str]:
  """`text` broken at spaces into lines at most `width` pixels wide; a word wider than a line
  and the last line kept (when `max_lines` is too few) are shortened with '…'."""
  lines = []
  for word in text.split():
    if lines and text_width(f"{lines[-1]} {word}", face) <= width:
      lines[-1] = f"{lines[-1]} {word}"
    else:
      lines.append(word)
  if len(lines) > max_lines:
    lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
  return [shorten(line, face, width) for line in lines]


def _namer(class_names):
  """id -> display name from a {id: name} dict or a list indexed by id (missing: the id)."""
  if isinstance(class_names, Mapping):
    return lambda i: str(class_names.get(int(i), int(i)))
  names = list(class_names or [])
  return lambda i: str(names[int(i)]) if 0 <= int(i) < len(names) else str(int(i))


# ------------------------------------------------------------------------------ geometry

def upscale(image, min_size: int = MIN_SIZE, resample=Image.BILINEAR
            ) -> tuple[Image.Image, tuple[float, float]]:
  """(`image` resized so that its shorter side is at least `min_size`, or as it is when it
  already is; (y scale, x scale) from the input's pixels to the output's)."""
  picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
  width, height = picture.size
  factor = max(1.0, min_size / max(1, min(width, height)))
  if factor == 1.0:
    return picture.copy(), (1.0, 1.0)
  size = (max(1, round(width * factor)), max(1, round(height * factor)))
  return picture.resize(size, resample), (size[1] / height, size[0] / width)


def _overlaps(a, b) -> bool:
  """Whether two (left, top, right, bottom) half-open rectangles share a pixel."""
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes, sizes, tile_size, occupied=()) -> list[tuple[int, int, int, int] | None]:
  """Greedy places for one label per box, in the order given (put the most important first).

  boxes: [N, 4] [y1, x1, y2, x2] in tile pixels; sizes: N (width, height) of the labels;
  tile_size: (width, height) of the tile; occupied: rectangles no label may cover.
  Returns, per box, the label's rectangle (left, top, right, bottom), half-open (it covers
  the pixels left <= x < right, top <= y < bottom), or None where none fits.
  A label starts at its box's left edge (moved left if it would leave the tile) and tries, in
  turn: just above the box, inside its top edge, just below it, then lower and lower from the
  top edge, then higher and higher from above the box; the first place inside the tile that
  covers no earlier label wins. Only the tile's edges and the earlier labels' edges need
  trying when shifting: every free place can slide up or down to one of them.
  """
  tile_width, tile_height = tile_size
  placed, result = list(occupied), []
  for (y1, x1, y2, _), (width, height) in zip(np.asarray(boxes, np.float64).reshape(-1, 4),
                                              sizes):
    width, height = int(np.ceil(width)), int(np.ceil(height))
    left = int(np.clip(np.floor(x1), 0, max(0, tile_width - width)))
    top_edge, bottom_edge = int(np.floor(y1)), int(np.ceil(y2))
    edges = {0, tile_height - height}
    for rect in placed:
      edges |= {rect[3], rect[1] - height}
    lower = sorted(t for t in edges if t > top_edge)
    higher = sorted((t for t in edges if t < top_edge - height), reverse=True)
    found = None
    for top in [top_edge - height, top_edge, bottom_edge] + lower + higher:
      rect = (left, top, left + width, top + height)
      if (0 <= top and rect[3] <= tile_height and rect[2] <= tile_width
          and not any(_overlaps(rect, other) for other in placed)):
        found = rect
        break
    if found:
      placed.append(found)
    result.append(found)
  return result


def _as_boxes(boxes) -> np.ndarray:
  return np.asarray(boxes, np.float64).reshape(-1, 4)


def _rectangle(draw, box, colour, width) -> None:
  y1, x1, y2, x2 = box
  draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour,
                 width=width)


# ------------------------------------------------------------------------------ detection

def draw_panel(image: np.ndarray, gt_boxes, pred_boxes, pred_scores, pred_classes,
               class_names: dict, score_threshold: float = 0.3,
               min_size: int = MIN_SIZE) -> Image.Image:
  """`image` (uint8 [H, W, 3]) upscaled so its shorter side is at least `min_size`, with the
  ground-truth boxes in green and the predictions scoring >= `score_threshold` in red, each
  labelled 'name score' where `place_labels` finds room (the highest scores first).

  Boxes are [y1, x1, y2, x2] in the pixels of `image`; pred_classes are 0-based and
  class_names are keyed by id = class + 1. The returned image's `info` holds
  "predictions_drawn" and "labels_dropped" (labels left out for want of room).
  """
  panel, (scale_y, scale_x) = upscale(image, min_size)
  panel = panel.convert("RGB")
  scale = np.array([scale_y, scale_x, scale_y, scale_x])
  short_side = min(panel.size)
  line = int(np.clip(round(short_side / 160), 2, 6))
  face = font(font_size(short_side))
  draw = ImageDraw.Draw(panel)
  for box in _as_boxes(gt_boxes) * scale:
    _rectangle(draw, box, GROUND_TRUTH, line)

  scores = np.asarray(pred_scores, np.float64).reshape(-1)
  classes = np.asarray(pred_classes).reshape(-1)
  boxes = _as_boxes(pred_boxes) * scale
  keep = np.flatnonzero(scores >= score_threshold)
  keep = keep[np.argsort(-scores[keep], kind="stable")]  # highest score first
  for i in keep[::-1]:  # the highest score drawn last, on top
    _rectangle(draw, boxes[i], PREDICTION, line)
  name = _namer(class_names or {})
  texts = [f"{name(int(classes[i]) + 1)} {scores[i]:.2f}" for i in keep]
  pad = 2  # around the text; each label also keeps a 1-px margin free on its right and bottom
  sizes = [(text_width(t, face) + 2 * pad + 1, line_height(face) + 2 * pad + 1) for t in texts]
  rects = place_labels(boxes[keep], sizes, panel.size)
  for text, rect in zip(texts, rects):
    if rect is not None:
      draw.rectangle([rect[0], rect[1], rect[2] - 2, rect[3] - 2], fill=LABEL_FILL)
      draw_line(draw, (rect[0] + pad, rect[1] + pad), text, face, (255, 255, 255))
  panel.info["predictions_drawn"] = len(keep)
  panel.info["labels_dropped"] = sum(rect is None for rect in rects)
  return panel


def detection_grid(images, gt_boxes, detections, class_names: dict, score_threshold: float,
                   path: str, columns: int = 4, min_size: int = MIN_SIZE) -> None:
  """One PNG at `path`: `draw_panel` of each image in a grid under a header that states the
  colours and the score threshold (and how many labels had no room).

  images: uint8 [H, W, 3] each (sizes may differ; tiles are padded to the largest);
  gt_boxes: [N, 4] [y1, x1, y2, x2] in image pixels each; detections: (boxes [M, 4],
  scores [M], classes [M] 0-based) each; class_names: {id = class + 1: name}.
  """
  if len(images) == 0:
    raise ValueError("detection_grid needs at least one image.")
  panels = [draw_panel(image, gt, boxes, scores, classes, class_names, score_threshold,
                       min_size)
            for image, gt, (boxes, scores, classes) in zip(images, gt_boxes, detections)]
  header = f"green: ground truth · red: predictions with score >= {score_threshold:.2f}"
  dropped = sum(panel.info["labels_dropped"] for panel in panels)
  if dropped:
    header += f" · {dropped} label{'s' if dropped > 1 else ''} left out (no room)"
  detlab_io.write_png(path, grid(panels, columns, [(header, TEXT)]))


def grid(tiles: list[Image.Image], columns: int = 4, header=()) -> Image.Image:
  """`tiles` in rows of `columns` (each cell as large as the largest tile, a tile at its
  cell's top left), below a header of (text, colour) lines wrapped to the grid's width."""
  columns = max(1, min(columns, len(tiles)))
  rows = -(-len(tiles) // columns)
  cell_width = max(tile.size[0] for tile in tiles)
  cell_height = max(tile.size[1] for tile in tiles)
  width = columns * cell_width + (columns - 1) * GAP
  header_strip = _header(header, width, min(min(tile.size) for tile in tiles))
  top = header_strip.size[1] if header_strip else 0
  canvas = Image.new("RGB", (width, top + rows * cell_height + (rows - 1) * GAP), BACKGROUND)
  if header_strip:
    canvas.paste(header_strip, (0, 0))
  for i, tile in enumerate(tiles):
    column, row = i % columns, i // columns
    canvas.paste(tile.convert("RGB"),
                 (column * (cell_width + GAP), top + row * (cell_height + GAP)))
  return canvas


def _header(lines, width: int, short_side: int) -> Image.Image | None:
  """A strip `width` wide holding each (text, colour) line, wrapped to fit; None for none."""
  if not lines:
    return None
  face = font(font_size(short_side))
  pad, step = 6, line_height(face) + 4
  wrapped = [(part, colour) for text, colour in lines
             for part in wrap(text, face, width - 2 * pad, max_lines=4)]
  strip = Image.new("RGB", (width, 2 * pad + len(wrapped) * step - 4), BACKGROUND)
  draw = ImageDraw.Draw(strip)
  for i, (text, colour) in enumerate(wrapped):
    draw_line(draw, (pad, pad + i * step), text, face, colour)
  return strip


# ------------------------------------------------------------------------- classification

def classification_grid(images, labels, predictions, path: str, class_names=None,
                        scores=None, columns: int = 4, min_size: int = MIN_SIZE) -> None:
  """One PNG at `path`: each image upscaled so its shorter side is at least `min_size`,
  captioned 'true / predicted (score)' in green when they agree and red otherwise, the
  caption wrapped (and at worst shortened) to its tile's width.

  images: uint8 [N, H, W, 3] (undo the input normalisation first); labels, predictions: [N]
  class indices; class_names: {index: name} or a list by index (default: the index);
  scores: [N] the predicted class's probability, or None to leave it out.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
    raise ValueError(f"images must be a non-empty uint8 [N, H, W, 3], got {images.dtype} "
                     f"{list(images.shape)}.")
  name = _namer(class_names)
  pictures = [upscale(image, min_size)[0] for image in images]
  face = font(font_size(min(min(p.size) for p in pictures)))
  captions = []
  for i, (picture, true, predicted) in enumerate(zip(pictures, labels, predictions)):
    text = f"{name(true)} / {name(predicted)}"
    if scores is not None:
      text += f" ({float(scores[i]):.2f})"
    captions.append(wrap(text, face, picture.size[0] - 8))
  pad, step = 4, line_height(face) + 3
  caption_height = 2 * pad + max(len(c) for c in captions) * step - 3
  tiles = []
  for picture, caption, true, predicted in zip(pictures, captions, labels, predictions):
    tile = Image.new("RGB", (picture.size[0], picture.size[1] + caption_height), BACKGROUND)
    tile.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(tile)
    colour = RIGHT if int(true) == int(predicted) else WRONG
    for j, line in enumerate(caption):
      draw_line(draw, (4, picture.size[1] + pad + j * step), line, face, colour)
    tiles.append(tile)
  header = "caption: true / predicted" + (" (score)" if scores is not None else "")
  header += " · green: right · red: wrong"
  detlab_io.write_png(path, grid(tiles, columns, [(header, TEXT)]))


# --------------------------------------------------------------------------- segmentation

def palette(num_classes: int) -> np.ndarray:
  """[K, 3] uint8 colours: Pascal VOC's (bit 3k + c of the class id sets bit 7 - k of
  channel c), so VOC classes get their usual colours (1 dark red, 15 person pink)."""
  ids = np.arange(num_classes, dtype=np.int64)
  colours = np.zeros([num_classes, 3], np.int64)
  for k in range(8):
    for channel in range(3):
      colours[:, channel] |= ((ids >> (3 * k + channel)) & 1) << (7 - k)
  return colours.astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5,
            ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """uint8 image [H, W, 3] blended (`alpha`) with each pixel's class colour; pixels holding
  `ignore_label` are blended with white, ids past the palette with its last colour."""
  labels = np.asarray(labels)
  ignored = labels == ignore_label
  ids = np.clip(np.where(ignored, 0, labels), 0, len(colours) - 1).astype(np.int64)
  colour = np.asarray(colours, np.float32)[ids]
  colour[ignored] = 255.0
  blended = (1.0 - alpha) * np.asarray(image, np.float32) + alpha * colour
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def segmentation_rows(images, labels, predictions, path: str, class_names=None,
                      ignore_label: int = IGNORE_LABEL, min_size: int = MIN_SIZE) -> None:
  """One PNG at `path`: a header naming the columns, a legend of the classes that appear, and
  one row per image: image | ground truth overlay | prediction overlay, upscaled so the
  image's shorter side is at least `min_size` (the label maps by nearest neighbour).

  images: uint8 [H, W, 3] each (sizes may differ; undo the normalisation first); labels and
  predictions: [H, W] class ids each (labels may hold `ignore_label`); class_names: {id: name}
  or a list by id (default: the id).
  """
  if len(images) == 0:
    raise ValueError("segmentation_rows needs at least one image.")
  shown = sorted({int(v) for m in list(labels) + list(predictions) for v in np.unique(m)}
                 - {ignore_label})
  colours = palette(max(shown + [0]) + 1)
  rows = []
  for image, truth, predicted in zip(images, labels, predictions):
    picture, _ = upscale(np.asarray(image, np.uint8), min_size)
    size = picture.size
    picture = np.asarray(picture.convert("RGB"))
    maps = [np.asarray(Image.fromarray(np.asarray(m).astype(np.int32)).resize(size,
                                                                              Image.NEAREST))
            for m in (truth, predicted)]
    gap = np.full([size[1], GAP, 3], BACKGROUND, np.uint8)
    rows.append(Image.fromarray(np.concatenate(
        [picture, gap, overlay(picture, maps[0], colours, ignore_label=ignore_label), gap,
         overlay(picture, maps[1], colours, ignore_label=ignore_label)], axis=1)))
  short_side = min(min(row.size[1], row.size[0]) for row in rows)
  width = max(row.size[0] for row in rows)
  header = _header([("each row: image | ground truth | prediction (white: ignored pixels)",
                     TEXT)], width, short_side)
  legend = _legend(shown, colours, _namer(class_names), width, short_side)
  height = header.size[1] + legend.size[1] + sum(row.size[1] for row in rows) + \
      (len(rows) - 1) * GAP
  canvas = Image.new("RGB", (width, height), BACKGROUND)
  canvas.paste(header, (0, 0))
  canvas.paste(legend, (0, header.size[1]))
  y = header.size[1] + legend.size[1]
  for row in rows:
    canvas.paste(row, (0, y))
    y += row.size[1] + GAP
  detlab_io.write_png(path, canvas)


def _legend(shown, colours, name, width: int, short_side: int) -> Image.Image:
  """A strip `width` wide of colour swatches with 'id: name', flowing into as many lines as
  needed (each entry shortened to the strip's width)."""
  face = font(font_size(short_side))
  pad, height = 6, line_height(face)
  step = height + 6
  entries, x, y = [], pad, 0
  for c in shown:
    text = shorten(f"{c}: {name(c)}", face, width - 3 * pad - height)
    entry_width = height + 4 + text_width(text, face)
    if x > pad and x + entry_width > width - pad:
      x, y = pad, y + step
    entries.append((x, y, c, text))
    x += entry_width + 3 * pad
  strip = Image.new("RGB", (width, y + step + pad), BACKGROUND)
  draw = ImageDraw.Draw(strip)
  for x, y, c, text in entries:
    draw.rectangle([x, y, x + height - 1, y + height - 1],
                   fill=tuple(int(v) for v in colours[c]), outline=TEXT)
    draw_line(draw, (x + height + 4, y), text, face, TEXT)
  return strip


# ------------------------------------------------------------------ instance segmentation

def _outline(mask: np.ndarray) -> np.ndarray:
  """The pixels of a 0/1 mask [H, W] with a 4-neighbour outside it (the image edge counts as
  outside)."""
  inside = np.pad(np.asarray(mask) > 0, 1)
  core = (inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
          & inside[1:-1, 2:])
  return inside[1:-1, 1:-1] & ~core


def mask_overlay(image: np.ndarray, gt_masks, pred_masks, pred_classes, alpha: float = 0.45
                 ) -> np.ndarray:
  """uint8 image [H, W, 3] with each predicted mask ([H, W] 0/1, in order: later on top)
  blended (`alpha`) in its class's colour (VOC palette of id = class + 1) and each
  ground-truth mask's outline drawn in GROUND_TRUTH green on top."""
  picture = np.asarray(image, np.float32).copy()
  colours = palette(256).astype(np.float32)
  for mask, cls in zip(pred_masks, np.asarray(pred_classes).reshape(-1)):
    inside = np.asarray(mask) > 0
    colour = colours[(int(cls) + 1) % 256]
    picture[inside] = (1.0 - alpha) * picture[inside] + alpha * colour
  for mask in gt_masks:
    picture[_outline(mask)] = GROUND_TRUTH
  return np.clip(np.round(picture), 0, 255).astype(np.uint8)


def instance_segmentation_grid(images, gt_boxes, gt_masks, detections, class_names: dict,
                               score_threshold: float, path: str, columns: int = 4,
                               min_size: int = MIN_SIZE) -> None:
  """detection_grid with masks: the predictions scoring >= `score_threshold` fill their
  masks in their class's colour, the ground-truth masks are outlined in green (mask_overlay),
  then boxes and labels as `draw_panel` draws them.

  images: uint8 [H, W, 3] each; gt_boxes: [N, 4] [y1, x1, y2, x2] image pixels each;
  gt_masks: [N, H, W] 0/1 each (may be empty); detections: (boxes [M, 4], scores [M],
  classes [M] 0-based, masks [M, H, W] 0/1 in image pixels) each; class_names: {id: name}.
  """
  if len(images) == 0:
    raise ValueError("instance_segmentation_grid needs at least one image.")
  panels = []
  for image, boxes, truth, (pred_boxes, scores, classes, masks) in zip(
      images, gt_boxes, gt_masks, detections):
    scores = np.asarray(scores, np.float64).reshape(-1)
    shown = np.flatnonzero(scores >= score_threshold)
    shown = shown[np.argsort(scores[shown], kind="stable")]  # the highest score on top
    blended = mask_overlay(image, list(truth), [masks[i] for i in shown],
                           np.asarray(classes).reshape(-1)[shown])
    panels.append(draw_panel(blended, boxes, pred_boxes, scores, classes, class_names,
                             score_threshold, min_size))
  header = (f"green: ground truth (boxes, mask outlines) · red: predictions with score >= "
            f"{score_threshold:.2f}, masks filled in their class colour")
  dropped = sum(panel.info["labels_dropped"] for panel in panels)
  if dropped:
    header += f" · {dropped} label{'s' if dropped > 1 else ''} left out (no room)"
  detlab_io.write_png(path, grid(panels, columns, [(header, TEXT)]))


# ---------------------------------------------------------------------------------- joint

def stack_pngs(paths: list[str], out_path: str) -> None:
  """The PNGs at `paths` that exist, one above the other (left-aligned, padded on the right),
  as one PNG at `out_path`; nothing is written when none exists."""
  images = [detlab_io.read_png(path) for path in paths if tf.io.gfile.exists(path)]
  if not images:
    return
  width = max(image.shape[1] for image in images)
  rows = [np.concatenate([image, np.full([image.shape[0], width - image.shape[1], 3],
                                         BACKGROUND, np.uint8)], axis=1)
          for image in images]
  detlab_io.write_png(out_path, np.concatenate(rows, axis=0))
