"""Detection evaluation: the COCO eval loop over a data set, and the detections PNG."""
import json

from absl import logging
import numpy as np
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.evaluation import visualize
from detlab.evaluation.coco_evaluator import CocoEvaluator
from detlab.progress import Progress


def load_category_names(label_map_file: str | None, annotation_file: str | None,
                        num_classes: int) -> dict[int, str]:
  """{category id: name} from a label map JSON, a COCO annotation file, or ids as names."""
  if label_map_file:
    with tf.io.gfile.GFile(label_map_file) as f:
      return {int(k): v for k, v in json.load(f).items()}
  if annotation_file:
    with tf.io.gfile.GFile(annotation_file) as f:
      return {c["id"]: c["name"] for c in json.load(f)["categories"]}
  return {i: str(i) for i in range(1, num_classes + 1)}


def evaluate_detections(detect_original_pixels, dataset: tf.data.Dataset,
                        category_names: dict, annotation_file: str | None = None,
                        num_images: int | None = None, visualize_path: str | None = None,
                        num_visualize: int = 8,
                        backend: str | None = None,
                        convention: InputConvention = IMAGENET_MEAN_STD) -> tuple[dict, dict]:
  """COCO (metrics, per-class AP) of `detect_original_pixels(images, image_info)` over
  `dataset` (eval form); the first `num_visualize` images drawn to `visualize_path`
  (un-normalized by the backbone's input `convention`)."""
  # Passed only when chosen, so a gin binding `CocoEvaluator.backend` still applies.
  evaluator = CocoEvaluator(category_names, annotation_file,
                            **({"backend": backend} if backend else {}))
  progress = Progress(num_images or 0, unit="images", min_interval=5.0)
  panels, seen = [], 0
  for batch in dataset:
    detections = detect_original_pixels(batch["images"], batch["image_info"])
    ground_truth = {k: v.numpy() for k, v in batch.items() if k != "images"}
    evaluator.add_batch(detections, ground_truth)
    if visualize_path and len(panels) < num_visualize:
      panels += detection_panels(batch, detections, category_names,
                                 num_visualize - len(panels), convention)
    seen += len(ground_truth["source_ids"])
    if num_images:
      progress.update(seen, prefix="eval ")
  metrics, per_class = evaluator.evaluate()
  if visualize_path and panels:
    visualize.save_grid(panels, visualize_path)
    logging.info("Wrote %s", visualize_path)
  return metrics, per_class


def detection_panels(batch, detections, category_names, limit,
                     convention: InputConvention = IMAGENET_MEAN_STD) -> list:
  """Ground truth (green) and predictions (red) drawn on the first `limit` images."""
  images = visualize.denormalize(batch["images"].numpy()[:limit], convention)
  info = batch["image_info"].numpy()
  panels = []
  for i, image in enumerate(images):
    scale = np.tile(info[i, 2], 2)
    count = int(batch["gt_count"][i])
    gt = batch["gt_boxes"].numpy()[i, :count] * scale
    n = int(detections["num_detections"][i])
    pred = detections["boxes"][i, :n] * scale
    panels.append(visualize.draw_panel(image, gt, pred, detections["scores"][i, :n],
                                       detections["classes"][i, :n], category_names))
  return panels
