"""The detection task's evaluator: COCO box metrics of `DetectionTask.predict`'s outputs
(boxes in original pixels) and the detections picture (evaluation/base.py: Evaluator)."""
from absl import logging
import numpy as np

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.evaluation import visualize
from detlab.evaluation.base import Evaluator
from detlab.evaluation.coco_evaluator import CocoEvaluator

DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")


class DetectionEvaluator(Evaluator):
  """COCO AP of the outputs {"boxes" [B, D, 4] yxyx original pixels, "scores", "classes"
  (0-based), "num_detections"} against the batch's ground truth or the annotation file.

  result(): (the 12 COCO numbers, {"per_class_AP": {name: AP}}). draw(): ground truth and
  predictions with score >= `score_threshold` on the first `num_visualize` images."""

  def __init__(self, category_names: dict, annotation_file: str | None = None,
               backend: str | None = None,
               convention: InputConvention = IMAGENET_MEAN_STD, num_visualize: int = 8,
               score_threshold: float = 0.3):
    # Passed only when chosen, so a gin binding `CocoEvaluator.backend` still applies.
    self.coco = CocoEvaluator(category_names, annotation_file,
                              **({"backend": backend} if backend else {}))
    self.category_names, self.convention = dict(category_names), convention
    self.num_visualize, self.score_threshold = num_visualize, score_threshold
    self.panels = []  # (image uint8, gt boxes, (boxes, scores, classes)) in model-input pixels

  def update(self, batch, outputs):
    detections = {k: np.asarray(outputs[k]) for k in DETECTION_KEYS}
    self.coco.add_batch(detections, batch)
    take = min(self.num_visualize - len(self.panels), len(batch["source_ids"]))
    if take <= 0:
      return
    images = self.convention.to_uint8(batch["images"][:take])
    for i in range(take):
      scale = np.tile(batch["image_info"][i, 2], 2)  # original -> model-input pixels
      count, n = int(batch["gt_count"][i]), int(detections["num_detections"][i])
      self.panels.append((images[i], batch["gt_boxes"][i, :count] * scale,
                          (detections["boxes"][i, :n] * scale, detections["scores"][i, :n],
                           detections["classes"][i, :n])))

  def result(self):
    metrics, per_class = self.coco.evaluate()
    return metrics, {"per_class_AP": per_class}

  def draw(self, path):
    if not self.panels:
      return False
    images, gt, detections = zip(*self.panels)
    visualize.detection_grid(list(images), list(gt), list(detections), self.category_names,
                             self.score_threshold, path)
    logging.info("Wrote %s", path)
    return True
