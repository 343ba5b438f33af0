"""COCO box evaluation (COCOeval of pycocotools, or faster-coco-eval: evaluation/coco_backends).

Ground truth comes from a COCO instances JSON when given (the official protocol), otherwise it
is built from the evaluation records as they stream by. Detections arrive as [y1, x1, y2, x2]
original-image pixels and are converted to COCO [x, y, w, h] here, at the border. Only the
images that were evaluated count (as in the reference): an annotation file may cover more.
A number COCO cannot define (no ground truth of that kind) is -1, COCO's own convention.
"""
import json

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from detlab.data.coco_fields import normalise_groundtruth
from detlab.evaluation.coco_backends import resolve_backend, run_cocoeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
UNDEFINED = -1.0  # COCOeval's value for a number without ground truth to define it


def _image_id(source_id) -> int:
  text = source_id.decode() if isinstance(source_id, bytes) else str(source_id)
  try:
    return int(text)
  except ValueError as error:
    raise ValueError(f"source_id {text!r} is not an integer image id; COCO evaluation needs "
                     "numeric image/source_id values (the converters write them).") from error


def _yxyx_to_xywh(boxes: np.ndarray) -> np.ndarray:
  return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                   boxes[:, 2] - boxes[:, 0]], axis=-1)


def load_annotation_file(path: str) -> dict:
  """A COCO instances JSON (any tf.io.gfile path), fields normalised (detlab.data.coco_fields)."""
  with tf.io.gfile.GFile(path) as f:
    return normalise_groundtruth(json.load(f), path)


# Configurable here rather than in train(): the backend changes how fast, not what, is
# computed, and no other layer needs to know of it. Bind `CocoEvaluator.backend = '...'`.
@gin.configurable(module="detlab.evaluation", allowlist=["backend"])
class CocoEvaluator:
  """Accumulates detections (and ground truth) batch by batch, then runs COCOeval.

  backend: 'faster' (faster-coco-eval, the default when installed) or 'pycocotools' (the
  reference); both give the same numbers (tests/evaluation/test_coco_backends.py).
  """

  def __init__(self, category_names: dict[int, str], annotation_file: str | None = None,
               backend: str | None = None):
    self.category_names = dict(category_names)
    self.annotation_file = annotation_file
    self.backend = resolve_backend(backend)
    self.summary_text = ""
    self.reset()

  def reset(self):
    self._detections, self._gt_images, self._gt_annotations = [], [], []
    self._image_ids = set()

  def add_batch(self, detections: dict, groundtruth: dict) -> None:
    """detections: numpy {"boxes" [B, D, 4] original pixels (yxyx), "scores", "classes" (0-based),
    "num_detections"}; groundtruth: numpy eval batch ("source_ids", "image_info", "gt_*")."""
    for i, source_id in enumerate(groundtruth["source_ids"]):
      image_id = _image_id(source_id)
      self._image_ids.add(image_id)
      n = int(detections["num_detections"][i])
      boxes = _yxyx_to_xywh(detections["boxes"][i, :n])
      for box, score, cls in zip(boxes, detections["scores"][i, :n],
                                 detections["classes"][i, :n]):
        self._detections.append({"image_id": image_id, "category_id": int(cls) + 1,
                                 "bbox": [float(v) for v in box], "score": float(score)})
      if self.annotation_file:
        continue
      height, width = groundtruth["image_info"][i, 0]
      self._gt_images.append({"id": image_id, "height": int(height), "width": int(width)})
      count = int(groundtruth["gt_count"][i])
      gt_boxes = _yxyx_to_xywh(groundtruth["gt_boxes"][i, :count])
      for box, cls, area, crowd in zip(gt_boxes, groundtruth["gt_classes"][i, :count],
                                       groundtruth["gt_areas"][i, :count],
                                       groundtruth["gt_is_crowd"][i, :count]):
        self._gt_annotations.append({
            "id": len(self._gt_annotations) + 1, "image_id": image_id,
            "category_id": int(cls) + 1, "bbox": [float(v) for v in box],
            "area": float(area), "iscrowd": int(crowd)})

  def _groundtruth(self) -> dict:
    """The COCO dict to evaluate against; checks that it covers every evaluated image."""
    categories = [{"id": i, "name": n} for i, n in sorted(self.category_names.items())]
    if not self.annotation_file:
      return {"images": self._gt_images, "annotations": self._gt_annotations,
              "categories": categories}
    dataset = load_annotation_file(self.annotation_file)
    missing = sorted(self._image_ids - {im["id"] for im in dataset.get("images", [])})
    if missing:
      shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
      raise ValueError(
          f"{len(missing)} evaluated image(s) are not in train.annotation_file "
          f"{self.annotation_file}: image ids {shown}. The eval records and the annotation "
          "file come from different sets: point train.annotation_file at the JSON the eval "
          "records were converted from (the converter's --output_annotations_file after "
          "--repair), or leave it unset to evaluate against the records' own boxes.")
    dataset.setdefault("categories", categories)
    return dataset

  def evaluate(self) -> tuple[dict, dict]:
    """Returns ({metric: value} for the 12 COCO numbers, {category name: AP}); -1 where COCO
    cannot define a number (no ground truth of that kind)."""
    gt = self._groundtruth()
    image_ids = sorted(self._image_ids)
    num_gt = sum(a["image_id"] in self._image_ids for a in gt["annotations"])
    if not num_gt:
      self.summary_text = (
          f"The {len(image_ids)} evaluated images have no ground-truth boxes "
          f"({self.annotation_file or 'the eval records'}): COCO AP and AR are undefined "
          "and reported as -1. Check EVAL_FILE_PATTERN (and train.annotation_file): "
          "evaluation needs annotated images.")
      logging.warning(self.summary_text)
      return ({name: UNDEFINED for name in METRIC_NAMES},
              {n: UNDEFINED for n in self.category_names.values()})
    if not self._detections:  # COCO's loadRes cannot take an empty list; nothing was found
      self.summary_text = "No detections: every ground-truth box is missed."
      return {name: 0.0 for name in METRIC_NAMES}, self._per_class_zero(gt)
    result = run_cocoeval(gt, self._detections, image_ids, self.backend)
    self.summary_text = result.summary
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, result.stats)}
    # precision: [IoU thresholds, recall points, categories, area ranges, max dets]
    precision = result.precision[:, :, :, 0, -1]
    per_class = {}
    for k, category_id in enumerate(result.category_ids):
      values = precision[:, :, k]
      values = values[values > -1]
      per_class[self.category_names.get(category_id, str(category_id))] = (
          float(values.mean()) if values.size else UNDEFINED)
    return metrics, per_class

  def _per_class_zero(self, gt: dict) -> dict:
    """0 for the categories with ground truth among the evaluated images, else -1."""
    present = {a["category_id"] for a in gt["annotations"] if a["image_id"] in self._image_ids}
    return {self.category_names.get(c["id"], str(c["id"])):
            0.0 if c["id"] in present else UNDEFINED for c in gt["categories"]}


def format_metrics(metrics: dict, nms_mode: str) -> str:
  """A two-row table of the 12 COCO numbers."""
  header = " ".join(f"{name:>6s}" for name in METRIC_NAMES)
  values = " ".join(f"{metrics[name]:6.3f}" for name in METRIC_NAMES)
  return f"COCO box metrics ({nms_mode} NMS)\n{header}\n{values}"
