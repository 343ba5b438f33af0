"""Classification metrics (top-1, top-5, per-class accuracy, loss) and a PNG grid of images
with their true and predicted labels.

The evaluator accumulates per-batch counts in numpy on the host (no TF state), so batches
from any strategy or an exported model can be fed alike, and `result()` is strict JSON:
classes without examples have per-class accuracy None (JSON null), never NaN.
"""
import io
import json

import numpy as np
from PIL import Image, ImageDraw
import tensorflow as tf


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class ClassificationEvaluator:
  """Accumulates logits [B, K] and integer labels [B] in 0..K-1 over batches.

  `result()` -> {"top1", "top5", "per_class_accuracy" (list of K, None where a class has no
  example), "loss" (mean softmax cross-entropy, no label smoothing), "num_examples"}.
  top5 is top-min(5, K).
  """

  def __init__(self, num_classes: int):
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    self.num_classes = num_classes
    self.reset()

  def reset(self) -> None:
    self._count = 0
    self._top1 = 0
    self._top5 = 0
    self._loss_sum = 0.0
    self._class_total = np.zeros(self.num_classes, np.int64)
    self._class_correct = np.zeros(self.num_classes, np.int64)

  def update(self, logits, labels) -> None:
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[1] != self.num_classes:
      raise ValueError(f"logits must be [B, {self.num_classes}], got {list(logits.shape)}.")
    if logits.shape[0] != labels.shape[0]:
      raise ValueError(f"{logits.shape[0]} logits rows but {labels.shape[0]} labels.")
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ValueError(f"label {int(bad[0])} is outside 0..{self.num_classes - 1}: the data has "
                       "more classes than num_classes (NUM_CLASSES); set it to the label map's "
                       "size.")
    rows = np.arange(labels.shape[0])
    # Rank of the true class = number of classes scoring strictly higher (ties favour it).
    rank = (logits > logits[rows, labels][:, None]).sum(axis=1)
    correct = rank == 0
    self._count += labels.shape[0]
    self._top1 += int(correct.sum())
    self._top5 += int((rank < min(5, self.num_classes)).sum())
    self._loss_sum += float(-_log_softmax(logits)[rows, labels].sum())
    np.add.at(self._class_total, labels, 1)
    np.add.at(self._class_correct, labels, correct.astype(np.int64))

  def result(self) -> dict:
    if self._count == 0:
      raise ValueError("ClassificationEvaluator.result() before any update(): the evaluation "
                       "data set is empty; check EVAL_FILE_PATTERN.")
    per_class = [None if total == 0 else float(correct / total)
                 for correct, total in zip(self._class_correct, self._class_total)]
    return {"top1": self._top1 / self._count, "top5": self._top5 / self._count,
            "per_class_accuracy": per_class, "loss": self._loss_sum / self._count,
            "num_examples": self._count}

  def to_json(self) -> str:
    return json.dumps(self.result(), allow_nan=False, indent=1)


def draw_labelled_grid(images: np.ndarray, labels, predictions, path: str,
                       class_names: dict | None = None, columns: int = 4,
                       scale: int = 2) -> None:
  """A PNG grid at `path` (any tf.io.gfile path): image i captioned 'true / predicted',
  green when they agree, red otherwise.

  images: uint8 [N, H, W, 3] (undo the input normalisation first); labels, predictions: [N]
  class indices; class_names: {index: name}, default the index.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
    raise ValueError(f"images must be a non-empty uint8 [N, H, W, 3], got {images.dtype} "
                     f"{list(images.shape)}.")
  names = class_names or {}
  height, width = images.shape[1] * scale, images.shape[2] * scale
  caption = 14
  rows = -(-len(images) // columns)
  grid = Image.new("RGB", (columns * width, rows * (height + caption)), (32, 32, 32))
  draw = ImageDraw.Draw(grid)
  for i, (image, true, pred) in enumerate(zip(images, labels, predictions)):
    x, y = (i % columns) * width, (i // columns) * (height + caption)
    grid.paste(Image.fromarray(image).resize((width, height), Image.NEAREST), (x, y))
    colour = (80, 230, 80) if int(true) == int(pred) else (255, 70, 70)
    text = f"{names.get(int(true), int(true))} / {names.get(int(pred), int(pred))}"
    draw.text((x + 2, y + height + 1), text, fill=colour)
  buffer = io.BytesIO()  # PIL writes local files only; gfile writes to any file system
  grid.save(buffer, format="PNG")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
