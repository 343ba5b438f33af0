"""Semantic segmentation metrics at each image's original resolution, and the task's evaluator
(those metrics and overlay rows drawn by evaluation/visualize.py).

Logits come at the model's input size (the image resized, aspect kept, and padded); each
image's logits are cropped to the resized region and resized back (bilinear) to the
original size before the argmax, so the ground truth is never shrunk. A confusion matrix
accumulates on the host (numpy; any strategy or exported model feeds it alike):
  IoU_c = TP_c / (TP_c + FP_c + FN_c); a class with TP + FP + FN = 0 (neither in the ground
  truth nor predicted) is absent: its IoU is None (JSON null) and it is left out of mIoU,
  as tf.metrics.mean_iou / DeepLab's evaluation do. Pixel accuracy = sum_c TP_c / valid pixels.
Ground-truth pixels equal to `ignore_label` (255) count nowhere.
"""
import json

import numpy as np
import tensorflow as tf

from detlab.evaluation import visualize
from detlab.evaluation.base import Evaluator

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


def original_images(images: np.ndarray, image_info: np.ndarray, convention) -> list:
  """Model-input images (normalised, resized, padded) -> uint8 images at original size."""
  out = []
  for image, info in zip(images, image_info):
    (h, w), (rh, rw) = info[0], info[1]
    pixels = tf.clip_by_value(convention.denormalize(
        image[:int(np.ceil(rh)), :int(np.ceil(rw))]), 0.0, 255.0)
    resized = tf.image.resize(pixels[None], [int(h), int(w)], method="bilinear")[0]
    out.append(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))
  return out


class SegmentationTaskEvaluator(Evaluator):
  """The segmentation task's evaluator (evaluation/base.py): SegmentationEvaluator's mIoU of
  the outputs {"logits" [B, S, S, K]} against the batch's "original_labels" at each image's
  original size, and image | ground truth | prediction rows for the first `num_visualize`."""

  def __init__(self, num_classes: int, ignore_label: int, convention,
               class_names: dict | None = None, num_visualize: int = 4):
    self.metrics = SegmentationEvaluator(num_classes, ignore_label)
    self.convention, self.class_names = convention, class_names
    self.num_visualize, self.ignore_label = num_visualize, ignore_label
    self.panels = ([], [], [])  # images, ground truth, predictions at original size

  def update(self, batch, outputs):
    logits, labels = outputs["logits"], batch["original_labels"]
    info = batch["image_info"]
    if labels.ndim == 4:
      labels = labels[..., 0]
    self.metrics.update(logits, labels, info)
    take = min(self.num_visualize - len(self.panels[0]), len(labels))
    if take > 0:
      maps = original_size_predictions(logits[:take], info[:take])
      self.panels[0].extend(original_images(batch["images"][:take], info[:take],
                                            self.convention))
      self.panels[1].extend(labels[i, :m.shape[0], :m.shape[1]] for i, m in enumerate(maps))
      self.panels[2].extend(maps)

  def result(self):
    result = self.metrics.result()
    per_class = result.pop("per_class_iou")
    return result, {"per_class_iou": per_class}

  def draw(self, path):
    if not self.panels[0]:
      return False
    visualize.segmentation_rows(*self.panels, path, class_names=self.class_names,
                                ignore_label=self.ignore_label)
    return True
