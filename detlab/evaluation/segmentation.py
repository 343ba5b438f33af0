"""Semantic segmentation metrics at each image's original resolution, and an overlay PNG.

Logits come at the model's input size (the image resized, aspect kept, and padded); each
image's logits are cropped to the resized region and resized back (bilinear) to the
original size before the argmax, so the ground truth is never shrunk. A confusion matrix
accumulates on the host (numpy; any strategy or exported model feeds it alike):
  IoU_c = TP_c / (TP_c + FP_c + FN_c); a class with TP + FP + FN = 0 (neither in the ground
  truth nor predicted) is absent: its IoU is None (JSON null) and it is left out of mIoU,
  as tf.metrics.mean_iou / DeepLab's evaluation do. Pixel accuracy = sum_c TP_c / valid pixels.
Ground-truth pixels equal to `ignore_label` (255) count nowhere.
"""
import io
import json

import numpy as np
from PIL import Image, ImageDraw
import tensorflow as tf

IGNORE_LABEL = 255


def original_size_predictions(logits, image_info) -> list[np.ndarray]:
  """logits [B, S, S, K] at the model input + image_info [B, 4, 2] (rows: original (h, w),
  resized (h, w), scale, offset; tfm's layout) -> class maps [h_i, w_i] at original size."""
  logits = tf.convert_to_tensor(logits, tf.float32)
  info = np.asarray(image_info)
  maps = []
  for i in range(logits.shape[0]):
    (orig_h, orig_w), (resized_h, resized_w) = info[i, 0], info[i, 1]
    region = logits[i, :int(np.ceil(resized_h)), :int(np.ceil(resized_w))]
    full = tf.image.resize(region[None], [int(orig_h), int(orig_w)], method="bilinear")[0]
    maps.append(tf.argmax(full, axis=-1, output_type=tf.int32).numpy())
  return maps


class SegmentationEvaluator:
  """Accumulates a K x K confusion matrix (rows: ground truth, columns: prediction)."""

  def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    self.num_classes, self.ignore_label = num_classes, ignore_label
    self.reset()

  def reset(self) -> None:
    self.confusion = np.zeros([self.num_classes, self.num_classes], np.int64)
    self._images = 0

  def update_maps(self, labels: np.ndarray, predictions: np.ndarray) -> None:
    """One image: ground truth [H, W] (class ids / ignore) and predicted class ids [H, W]."""
    labels, predictions = np.asarray(labels).astype(np.int64), np.asarray(predictions)
    if labels.shape != predictions.shape:
      raise ValueError(f"prediction {predictions.shape} and ground truth {labels.shape} "
                       "differ in size.")
    valid = labels != self.ignore_label
    gt, pred = labels[valid], predictions[valid].astype(np.int64)
    bad = gt[(gt < 0) | (gt >= self.num_classes)]
    if bad.size:
      raise ValueError(f"ground-truth label {int(bad[0])} is outside 0..{self.num_classes - 1} "
                       f"and not the ignore label {self.ignore_label}: set NUM_CLASSES to the "
                       "data's number of classes (including background).")
    self.confusion += np.bincount(gt * self.num_classes + pred,
                                  minlength=self.num_classes**2).reshape(self.confusion.shape)
    self._images += 1

  def update(self, logits, labels, image_info) -> None:
    """A batch: logits [B, S, S, K]; labels [B, H_max, W_max] original-size ground truth
    padded with the ignore label; image_info [B, 4, 2]."""
    labels, info = np.asarray(labels), np.asarray(image_info)
    if labels.ndim == 4:
      labels = labels[..., 0]
    for i, pred in enumerate(original_size_predictions(logits, info)):
      h, w = pred.shape
      self.update_maps(labels[i, :h, :w], pred)

  def result(self) -> dict:
    if self._images == 0:
      raise ValueError("SegmentationEvaluator.result() before any update(): the evaluation "
                       "data set is empty; check EVAL_FILE_PATTERN.")
    tp = np.diag(self.confusion).astype(np.float64)
    union = self.confusion.sum(0) + self.confusion.sum(1) - tp
    per_class = [None if u == 0 else float(t / u) for t, u in zip(tp, union)]
    present = [v for v in per_class if v is not None]
    total = self.confusion.sum()
    return {"mIoU": float(np.mean(present)) if present else None,
            "per_class_iou": per_class,
            "pixel_accuracy": float(tp.sum() / total) if total else None,
            "num_images": self._images, "num_valid_pixels": int(total)}

  def to_json(self) -> str:
    return json.dumps(self.result(), allow_nan=False, indent=1)


def palette(num_classes: int) -> np.ndarray:
  """[K, 3] uint8 colours: the Pascal VOC palette (bits of the class id spread over R, G, B),
  so VOC classes get their usual colours."""
  colours = np.zeros([num_classes, 3], np.uint8)
  for c in range(num_classes):
    value, shift = c, 7
    while value:
      for channel in range(3):
        colours[c, channel] |= ((value >> channel) & 1) << shift
      value >>= 3
      shift -= 1
  return colours


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray,
            alpha: float = 0.5, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """uint8 image [H, W, 3] blended with class colours; ignore pixels are shown white."""
  safe = np.where(labels == ignore_label, 0, labels).astype(np.int64)
  colour = colours[np.clip(safe, 0, len(colours) - 1)].astype(np.float32)
  colour[labels == ignore_label] = 255.0
  out = (1 - alpha) * image.astype(np.float32) + alpha * colour
  return np.clip(out, 0, 255).astype(np.uint8)


def draw_segmentation_panels(images, labels, predictions, path: str,
                             class_names: dict | None = None) -> None:
  """A PNG at `path` (any tf.io.gfile path): one row per image, image | ground truth overlay |
  prediction overlay, and a legend of the classes that appear.

  images: uint8 [H, W, 3] each (original size; undo the normalisation first); labels and
  predictions: [H, W] class ids each (labels may hold the ignore label)."""
  if len(images) == 0:
    raise ValueError("draw_segmentation_panels needs at least one image.")
  names = class_names or {}
  shown = sorted({int(v) for m in list(labels) + list(predictions) for v in np.unique(m)}
                 - {IGNORE_LABEL})
  colours = palette(max(shown + [0]) + 1)
  rows = [np.concatenate([np.asarray(im, np.uint8), overlay(im, gt, colours),
                          overlay(im, pr, colours)], axis=1)
          for im, gt, pr in zip(images, labels, predictions)]
  width = max(r.shape[1] for r in rows)
  line = 14
  legend_height = line * (len(shown) + 1)
  canvas = Image.new("RGB", (max(width, 160), sum(r.shape[0] for r in rows) + legend_height),
                     (32, 32, 32))
  y = 0
  for r in rows:
    canvas.paste(Image.fromarray(r), (0, y))
    y += r.shape[0]
  draw = ImageDraw.Draw(canvas)
  draw.text((2, y + 1), "image | ground truth | prediction (white: ignore)", fill=(230, 230, 230))
  for i, c in enumerate(shown):
    top = y + line * (i + 1)
    draw.rectangle([2, top + 2, 12, top + 11], fill=tuple(int(v) for v in colours[c]))
    draw.text((16, top + 1), f"{c}: {names.get(c, c)}", fill=(230, 230, 230))
  buffer = io.BytesIO()  # PIL writes local files only; gfile writes to any file system
  canvas.save(buffer, format="PNG")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
