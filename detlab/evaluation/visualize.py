"""Draws ground-truth (green) and predicted (red, with class and score) boxes to a PNG grid."""
import io

import numpy as np
from PIL import Image, ImageDraw
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention


def denormalize(images: np.ndarray,
                convention: InputConvention = IMAGENET_MEAN_STD) -> np.ndarray:
  """Inverse of the pipeline's normalization by the backbone's input `convention` (the
  Inception/Xception [-1, 1] one differs from ImageNet's mean/std) -> uint8."""
  pixels = np.asarray(images, np.float32) * np.array(convention.std, np.float32)
  return np.clip(np.round(pixels + np.array(convention.mean, np.float32)), 0,
                 255).astype(np.uint8)


def draw_panel(image: np.ndarray, gt_boxes, pred_boxes, pred_scores, pred_classes,
               class_names: dict, score_threshold: float = 0.3) -> Image.Image:
  """Boxes are [y1, x1, y2, x2] in the pixels of `image`."""
  panel = Image.fromarray(image)
  draw = ImageDraw.Draw(panel)
  for y1, x1, y2, x2 in gt_boxes:
    draw.rectangle([x1, y1, x2, y2], outline=(0, 255, 0), width=2)
  for (y1, x1, y2, x2), score, cls in zip(pred_boxes, pred_scores, pred_classes):
    if score < score_threshold:
      continue
    draw.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=1)
    draw.text((x1 + 2, y1 + 1), f"{class_names.get(int(cls) + 1, cls)} {score:.2f}",
              fill=(255, 255, 0))
  return panel


def save_grid(panels: list[Image.Image], path: str, columns: int = 4) -> None:
  """A PNG grid of `panels` at `path` (any tf.io.gfile path: local, gs://, ram://)."""
  width, height = panels[0].size
  rows = -(-len(panels) // columns)
  grid = Image.new("RGB", (columns * width, rows * height), (32, 32, 32))
  for i, panel in enumerate(panels):
    grid.paste(panel, ((i % columns) * width, (i // columns) * height))
  buffer = io.BytesIO()  # PIL writes local files only; gfile writes to any file system
  grid.save(buffer, format="PNG")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
