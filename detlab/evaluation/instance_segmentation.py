"""The instance segmentation evaluator: COCO box and mask metrics of a detector whose
`predict` also gives a box-relative mask per detection, and the picture with the masks.

outputs (numpy, per eval batch): DetectionEvaluator's {"boxes" [B, D, 4] [y1, x1, y2, x2]
original pixels, "scores", "classes" (0-based), "num_detections"} plus "masks" [B, D, M, M]
mask probabilities relative to each box (the OD API's `detection_masks`). Masks are pasted at
each image's original size and evaluated with COCO's 'segm' IoU (coco_evaluator.CocoEvaluator
with masks=True) against the annotation file or the eval batches' "gt_masks".

result(): metrics = the 12 box numbers (AP ... ARl) and the same 12 for masks prefixed
"mask_" (mask_AP, mask_AP50, mask_AP75, mask_APs/m/l, mask_AR1/10/100, mask_ARs/m/l);
extra = {"per_class_AP": {name: box AP}, "per_class_mask_AP": {name: mask AP}}.
"""
from absl import logging
import numpy as np

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.evaluation import visualize
from detlab.evaluation.coco_evaluator import METRIC_NAMES, CocoEvaluator, paste_mask
from detlab.evaluation.detection import DETECTION_KEYS, DetectionEvaluator

MASK_PREFIX = "mask_"
MASK_METRIC_NAMES = tuple(MASK_PREFIX + name for name in METRIC_NAMES)
INSTANCE_SEGMENTATION_KEYS = DETECTION_KEYS + ("masks",)


def groundtruth_mask_in_input(mask: np.ndarray, image_info: np.ndarray,
                              size: int) -> np.ndarray:
  """A ground-truth mask at original resolution [H, W] -> [size, size] in model-input pixels
  (image_info: the eval batch's [[orig h, w], [scaled h, w], [scale y, x], [offset y, x]];
  nearest neighbour; the padding is 0)."""
  height, width = (int(v) for v in image_info[0])
  scale_y, scale_x = image_info[2]
  rows = np.floor((np.arange(size) + 0.5) / scale_y).astype(int)
  cols = np.floor((np.arange(size) + 0.5) / scale_x).astype(int)
  inside = (rows < height)[:, None] & (cols < width)[None, :]
  picked = mask[np.minimum(rows, height - 1)][:, np.minimum(cols, width - 1)]
  return (picked > 0) & inside


class InstanceSegmentationEvaluator(DetectionEvaluator):
  """COCO box + mask AP (see the module docstring) and the eval picture: ground truth (boxes,
  mask outlines) and the predictions scoring >= `score_threshold` (boxes, filled masks) on
  the first `num_visualize` images."""

  def __init__(self, category_names: dict, annotation_file: str | None = None,
               backend: str | None = None,
               convention: InputConvention = IMAGENET_MEAN_STD, num_visualize: int = 8,
               score_threshold: float = 0.3):
    super().__init__(category_names, annotation_file, backend, convention, num_visualize,
                     score_threshold)
    self.coco = CocoEvaluator(category_names, annotation_file, masks=True,
                              **({"backend": backend} if backend else {}))

  def update(self, batch, outputs):
    detections = {k: np.asarray(outputs[k]) for k in INSTANCE_SEGMENTATION_KEYS}
    self.coco.add_batch(detections, batch)
    take = min(self.num_visualize - len(self.panels), len(batch["source_ids"]))
    if take <= 0:
      return
    images = self.convention.to_uint8(batch["images"][:take])
    size = images.shape[1]
    for i in range(take):
      info = batch["image_info"][i]
      scale = np.tile(info[2], 2)  # original -> model-input pixels
      count, n = int(batch["gt_count"][i]), int(detections["num_detections"][i])
      gt_masks = ([groundtruth_mask_in_input(m, info, size)
                   for m in batch["gt_masks"][i, :count]] if "gt_masks" in batch else [])
      boxes, scores = detections["boxes"][i, :n] * scale, detections["scores"][i, :n]
      shown = np.flatnonzero(scores >= self.score_threshold)
      masks = np.zeros([n, size, size], np.uint8)
      for j in shown:  # only what the picture shows is pasted at model-input size
        masks[j] = paste_mask(detections["masks"][i, j], boxes[j], size, size)
      self.panels.append((images[i], batch["gt_boxes"][i, :count] * scale, gt_masks,
                          (boxes, scores, detections["classes"][i, :n], masks)))

  def result(self):
    metrics, per_class = self.coco.evaluate()
    mask_metrics, mask_per_class = self.coco.evaluate_masks()
    metrics.update({MASK_PREFIX + name: value for name, value in mask_metrics.items()})
    return metrics, {"per_class_AP": per_class, "per_class_mask_AP": mask_per_class}

  def draw(self, path):
    if not self.panels:
      return False
    images, gt_boxes, gt_masks, detections = zip(*self.panels)
    visualize.instance_segmentation_grid(list(images), list(gt_boxes), list(gt_masks),
                                         list(detections), self.category_names,
                                         self.score_threshold, path)
    logging.info("Wrote %s", path)
    return True


def format_metrics(metrics: dict, nms_mode: str) -> str:
  """The 12 COCO box numbers and the 12 mask numbers, as two two-row tables."""
  header = " ".join(f"{name:>6s}" for name in METRIC_NAMES)
  rows = []
  for title, prefix in (("box", ""), ("mask", MASK_PREFIX)):
    values = " ".join(f"{metrics[prefix + name]:6.3f}" for name in METRIC_NAMES)
    rows.append(f"COCO {title} metrics ({nms_mode} NMS)\n{header}\n{values}")
  return "\n".join(rows)
