"""COCO box evaluation with pycocotools' COCOeval.

Ground truth comes from a COCO instances JSON when given (the official protocol), otherwise it
is built from the evaluation records as they stream by. Detections arrive as [y1, x1, y2, x2]
original-image pixels and are converted to COCO [x, y, w, h] here, at the border.
"""
import contextlib
import io
import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


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


class CocoEvaluator:
  """Accumulates detections (and ground truth) batch by batch, then runs COCOeval."""

  def __init__(self, category_names: dict[int, str], annotation_file: str | None = None):
    self.category_names = dict(category_names)
    self.annotation_file = annotation_file
    self.reset()

  def reset(self):
    self._detections, self._gt_images, self._gt_annotations = [], [], []

  def add_batch(self, detections: dict, groundtruth: dict) -> None:
    """detections: numpy {"boxes" [B, D, 4] original pixels (yxyx), "scores", "classes" (0-based),
    "num_detections"}; groundtruth: numpy eval batch ("source_ids", "image_info", "gt_*")."""
    for i, source_id in enumerate(groundtruth["source_ids"]):
      image_id = _image_id(source_id)
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

  def _groundtruth(self) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
      if self.annotation_file:
        return COCO(self.annotation_file)
      coco = COCO()
      coco.dataset = {"images": self._gt_images, "annotations": self._gt_annotations,
                      "categories": [{"id": i, "name": n}
                                     for i, n in sorted(self.category_names.items())]}
      coco.createIndex()
      return coco

  def evaluate(self) -> tuple[dict, dict]:
    """Returns ({metric: value} for the 12 COCO numbers, {category name: AP})."""
    gt = self._groundtruth()
    evaluated_ids = sorted({d["image_id"] for d in self._detections} |
                           {im["id"] for im in self._gt_images})
    if not self._detections:
      return {name: 0.0 for name in METRIC_NAMES}, {n: 0.0 for n in self.category_names.values()}
    with contextlib.redirect_stdout(io.StringIO()) as log:
      detections = gt.loadRes(self._detections)
      coco_eval = COCOeval(gt, detections, iouType="bbox")
      if evaluated_ids and not self.annotation_file:
        coco_eval.params.imgIds = evaluated_ids
      coco_eval.evaluate()
      coco_eval.accumulate()
      coco_eval.summarize()
    self.summary_text = log.getvalue()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats)}
    # precision: [IoU thresholds, recall points, categories, area ranges, max dets]
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
      values = precision[:, :, k]
      values = values[values > -1]
      per_class[self.category_names.get(category_id, str(category_id))] = (
          float(values.mean()) if values.size else float("nan"))
    return metrics, per_class


def format_metrics(metrics: dict, nms_mode: str) -> str:
  """A two-row table of the 12 COCO numbers."""
  header = " ".join(f"{name:>6s}" for name in METRIC_NAMES)
  values = " ".join(f"{metrics[name]:6.3f}" for name in METRIC_NAMES)
  return f"COCO box metrics ({nms_mode} NMS)\n{header}\n{values}"


def save_metrics(path: str, metrics: dict, per_class: dict, extra: dict | None = None) -> None:
  with open(path, "w") as f:
    json.dump({"metrics": metrics, "per_class_AP": per_class, **(extra or {})}, f, indent=1)
