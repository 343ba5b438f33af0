"""The detection task: loss for training, prediction in original pixels, COCO evaluation."""
import json

from absl import logging
import numpy as np
import tensorflow as tf

from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig, postprocess
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


class DetectionTask:
  """Glue between an EfficientDet-style model, its loss and post-processing."""

  def __init__(self, model, loss: DetectionLoss, postprocess_config: PostprocessConfig):
    self.model, self.loss, self.postprocess_config = model, loss, postprocess_config
    self.anchor_boxes = model.anchors.boxes()

  def compute_loss(self, model, batch: dict, training: bool) -> dict:
    class_outputs, box_outputs = model(batch["images"], training=training)
    cls, box = model.flatten_outputs(class_outputs, box_outputs)
    return self.loss(cls, box, batch["cls_targets"], batch["box_targets"])

  @tf.function
  def detect(self, images: tf.Tensor) -> dict:
    """Detections in model-input pixels ([y1, x1, y2, x2]), classes 0-based."""
    class_outputs, box_outputs = self.model(images, training=False)
    cls, box = self.model.flatten_outputs(class_outputs, box_outputs)
    return postprocess(cls, box, self.anchor_boxes, self.model.anchors.image_size,
                       self.postprocess_config)

  def detect_original_pixels(self, images: tf.Tensor, image_info: tf.Tensor,
                             detect=None) -> dict:
    """As `detect` (or the given `detect(images)`, e.g. one that runs per replica of a
    strategy), with boxes mapped back to the original image (÷ scale, clipped)."""
    detections = {k: v.numpy() for k, v in (detect or self.detect)(images).items()}
    info = image_info.numpy()
    scale = np.tile(info[:, 2, :], [1, 2])[:, None, :]
    offset = np.tile(info[:, 3, :], [1, 2])[:, None, :]
    limit = np.tile(info[:, 0, :], [1, 2])[:, None, :]
    boxes = (detections["boxes"] + offset) / scale
    detections["boxes"] = np.clip(boxes, 0.0, limit)
    return detections

  def evaluate(self, dataset: tf.data.Dataset, category_names: dict,
               annotation_file: str | None = None, num_images: int | None = None,
               visualize_path: str | None = None, num_visualize: int = 8,
               detect=None) -> tuple[dict, dict]:
    """Runs the model over `dataset` (eval form) and returns COCO (metrics, per-class AP).
    detect: `detect(images) -> detections` in place of `self.detect` (see
    detect_original_pixels)."""
    evaluator = CocoEvaluator(category_names, annotation_file)
    progress = Progress(num_images or 0, unit="images", min_interval=5.0)
    panels, seen = [], 0
    for batch in dataset:
      detections = self.detect_original_pixels(batch["images"], batch["image_info"],
                                               **({"detect": detect} if detect else {}))
      ground_truth = {k: v.numpy() for k, v in batch.items() if k != "images"}
      evaluator.add_batch(detections, ground_truth)
      if visualize_path and len(panels) < num_visualize:
        panels += self._panels(batch, detections, category_names, num_visualize - len(panels))
      seen += len(ground_truth["source_ids"])
      if num_images:
        progress.update(seen, prefix="eval ")
    metrics, per_class = evaluator.evaluate()
    if visualize_path and panels:
      visualize.save_grid(panels, visualize_path)
      logging.info("Wrote %s", visualize_path)
    return metrics, per_class

  def _panels(self, batch, detections, category_names, limit):
    images = visualize.denormalize(batch["images"].numpy()[:limit])
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
