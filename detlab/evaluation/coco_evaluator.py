"""COCO box and mask evaluation (COCOeval of pycocotools, or faster-coco-eval:
evaluation/coco_backends).

Ground truth comes from a COCO instances JSON when given (the official protocol), otherwise it
is built from the evaluation records as they stream by. Detections arrive as [y1, x1, y2, x2]
original-image pixels and are converted to COCO [x, y, w, h] here, at the border. Only the
images that were evaluated count (as in the reference): an annotation file may cover more.
A number COCO cannot define (no ground truth of that kind) is -1, COCO's own convention.

With `masks=True` each detection also has a box-relative M x M mask probability (the OD API's
`detection_masks`): it is pasted at the image's original resolution
(`official.vision.ops.mask_ops.paste_instance_masks_v2`: cell centres on the box's pixel grid,
bilinear, > 0.5; the v1 paste truncates the expanded box to integers and shifts masks by up to
a pixel), RLE-encoded and evaluated with iouType 'segm' (`evaluate_masks`). Ground-truth
masks come from the annotation file's `segmentation` (an annotation without one counts as its
box, as the converter writes it) or, without a file, from the eval batches' "gt_masks".
"""
import json

from absl import logging
import gin
import numpy as np
from pycocotools import mask as mask_util
import tensorflow as tf

from detlab.data.coco_fields import normalise_groundtruth
from detlab.evaluation.coco_backends import resolve_backend, run_cocoeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
UNDEFINED = -1.0  # COCOeval's value for a number without ground truth to define it
NO_GT_MASKS = ("mask evaluation without train.annotation_file needs the eval batches' "
               "\"gt_masks\" (InputConfig.instance_masks = @InstanceMaskConfig() with "
               "eval_masks=True on the eval input, over records written with masks); or set "
               "train.annotation_file to the COCO JSON with segmentations.")


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


def encode_mask(mask: np.ndarray) -> dict:
  """uint8/bool [H, W] -> COCO compressed RLE {"size", "counts" (str, JSON-able)}."""
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("ascii")
  return rle


def _paste_in_box(mask: np.ndarray, box_yxyx, height: int, width: int
                  ) -> tuple[np.ndarray, int, int]:
  """(the pasted mask on the box's pixels only, uint8 [h, w] 0/1, its top, its left)."""
  # Imported here: mask_ops pulls in OpenCV, which only mask evaluation needs.
  from official.vision.ops import mask_ops  # pylint: disable=import-outside-toplevel
  y1, x1, y2, x2 = (float(v) for v in np.asarray(box_yxyx).reshape(4))
  # tfm's paste on the box's own pixels only: on the whole image it allocates a float64
  # canvas per detection (3.6 ms at 640 x 480; 100 detections x 5000 COCO images = 30 min).
  top, left = max(int(np.floor(y1)), 0), max(int(np.floor(x1)), 0)
  bottom, right = min(int(np.ceil(y2)), int(height)), min(int(np.ceil(x2)), int(width))
  if bottom <= top or right <= left:
    return np.zeros([0, 0], np.uint8), 0, 0
  box = np.array([[x1 - left, y1 - top, x2 - x1, y2 - y1]], np.float64)
  region = mask_ops.paste_instance_masks_v2(np.asarray(mask, np.float32)[None], box,
                                            bottom - top, right - left)
  return region[0].astype(np.uint8), top, left


def paste_mask(mask: np.ndarray, box_yxyx: np.ndarray, height: int, width: int) -> np.ndarray:
  """A box-relative mask probability [M, M] -> uint8 [height, width] 0/1 in image pixels
  (box [y1, x1, y2, x2] pixels of that image; tfm `paste_instance_masks_v2`: cell centres
  on the box, bilinear, > 0.5)."""
  region, top, left = _paste_in_box(mask, box_yxyx, height, width)
  pasted = np.zeros([int(height), int(width)], np.uint8)
  pasted[top:top + region.shape[0], left:left + region.shape[1]] = region
  return pasted


def region_rle(region: np.ndarray, top: int, left: int, height: int, width: int) -> dict:
  """COCO compressed RLE (str counts) of a height x width mask that is 0 outside `region`
  (0/1 [h, w] placed at top, left), without building the whole image (encoding the whole
  image costs ~1 ms at 640 x 480; this, the box's pixels)."""
  columns = np.pad(np.asarray(region) > 0, ((1, 1), (0, 0))).T.astype(np.int8)
  steps = np.diff(columns, axis=1)  # [w, h + 1]: +1 where a run starts, -1 after it ends
  start_col, start_row = np.nonzero(steps == 1)
  end_col, end_row = np.nonzero(steps == -1)
  # Column-major pixel indices; np.nonzero's order (column, then row) is ascending in them.
  starts = (left + start_col) * height + top + start_row
  ends = (left + end_col) * height + top + end_row
  if len(starts) > 1:  # a run at a column's bottom goes on at the next column's top
    joined = starts[1:] == ends[:-1]
    starts = np.concatenate([starts[:1], starts[1:][~joined]])
    ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
  bounds = np.stack([starts, ends], 1).reshape(-1)
  counts = np.diff(np.concatenate([[0], bounds, [height * width]])).tolist()
  if len(counts) > 1 and counts[-1] == 0:  # ends on the last pixel: no trailing zeros run
    counts.pop()
  rle = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
  return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def mask_rle(mask: np.ndarray, box_yxyx: np.ndarray, height: int, width: int) -> dict:
  """encode_mask(paste_mask(...)) without the whole-image arrays."""
  return region_rle(*_paste_in_box(mask, box_yxyx, height, width), int(height), int(width))


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
  masks: also accumulate mask results and ground truth for `evaluate_masks`.
  """

  def __init__(self, category_names: dict[int, str], annotation_file: str | None = None,
               backend: str | None = None, masks: bool = False):
    self.category_names = dict(category_names)
    self.annotation_file = annotation_file
    self.backend = resolve_backend(backend)
    self.masks = masks
    self.summary_text = self.mask_summary_text = ""
    self.reset()

  def reset(self):
    self._detections, self._gt_images, self._gt_annotations = [], [], []
    self.mask_results = []  # COCO 'segm' result rows (RLE), as written for COCO's server
    self._image_ids = set()
    self._loaded_groundtruth = None

  def add_batch(self, detections: dict, groundtruth: dict) -> None:
    """detections: numpy {"boxes" [B, D, 4] original pixels (yxyx), "scores", "classes" (0-based),
    "num_detections"; with masks also "masks" [B, D, M, M] box-relative probabilities};
    groundtruth: numpy eval batch ("source_ids", "image_info", "gt_*"; with masks and no
    annotation file "gt_masks" [B, G, H, W] at original resolution, padded)."""
    if self.masks and "masks" not in detections:
      raise ValueError("CocoEvaluator(masks=True) needs detections[\"masks\"] [B, D, M, M] "
                       "(box-relative mask probabilities).")
    if self.masks and not self.annotation_file and "gt_masks" not in groundtruth:
      raise ValueError(NO_GT_MASKS)
    for i, source_id in enumerate(groundtruth["source_ids"]):
      image_id = _image_id(source_id)
      self._image_ids.add(image_id)
      n = int(detections["num_detections"][i])
      boxes = _yxyx_to_xywh(detections["boxes"][i, :n])
      for box, score, cls in zip(boxes, detections["scores"][i, :n],
                                 detections["classes"][i, :n]):
        self._detections.append({"image_id": image_id, "category_id": int(cls) + 1,
                                 "bbox": [float(v) for v in box], "score": float(score)})
      if self.masks or not self.annotation_file:
        height, width = (int(v) for v in groundtruth["image_info"][i, 0])
      if self.masks:
        for mask, box, score, cls in zip(detections["masks"][i, :n], detections["boxes"][i, :n],
                                         detections["scores"][i, :n],
                                         detections["classes"][i, :n]):
          self.mask_results.append({
              "image_id": image_id, "category_id": int(cls) + 1, "score": float(score),
              "segmentation": mask_rle(mask, box, height, width)})
      if self.annotation_file:
        continue
      self._gt_images.append({"id": image_id, "height": height, "width": width})
      count = int(groundtruth["gt_count"][i])
      gt_boxes = _yxyx_to_xywh(groundtruth["gt_boxes"][i, :count])
      for k, (box, cls, area, crowd) in enumerate(zip(
          gt_boxes, groundtruth["gt_classes"][i, :count], groundtruth["gt_areas"][i, :count],
          groundtruth["gt_is_crowd"][i, :count])):
        annotation = {
            "id": len(self._gt_annotations) + 1, "image_id": image_id,
            "category_id": int(cls) + 1, "bbox": [float(v) for v in box],
            "area": float(area), "iscrowd": int(crowd)}
        if self.masks:
          annotation["segmentation"] = encode_mask(groundtruth["gt_masks"][i, k, :height, :width])
        self._gt_annotations.append(annotation)

  def _groundtruth(self) -> dict:
    """The COCO dict to evaluate against; checks that it covers every evaluated image."""
    categories = [{"id": i, "name": n} for i, n in sorted(self.category_names.items())]
    if not self.annotation_file:
      return {"images": self._gt_images, "annotations": self._gt_annotations,
              "categories": categories}
    if self._loaded_groundtruth is not None:  # box and mask evaluation read the file once
      return self._loaded_groundtruth
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
    if self.masks:
      dataset = _with_segmentations(dataset, self._image_ids)
    self._loaded_groundtruth = dataset
    return dataset

  def evaluate(self) -> tuple[dict, dict]:
    """Returns ({metric: value} for the 12 COCO numbers, {category name: AP}); -1 where COCO
    cannot define a number (no ground truth of that kind)."""
    metrics, per_class, self.summary_text = self._evaluate("bbox", self._detections)
    return metrics, per_class

  def evaluate_masks(self) -> tuple[dict, dict]:
    """evaluate() for the masks (COCO iouType 'segm'): the same 12 names and per-class AP."""
    if not self.masks:
      raise ValueError("evaluate_masks needs CocoEvaluator(masks=True).")
    metrics, per_class, self.mask_summary_text = self._evaluate("segm", self.mask_results)
    return metrics, per_class

  def _evaluate(self, iou_type: str, results: list[dict]) -> tuple[dict, dict, str]:
    gt = self._groundtruth()
    image_ids = sorted(self._image_ids)
    num_gt = sum(a["image_id"] in self._image_ids for a in gt["annotations"])
    what, plural = ("box", "boxes") if iou_type == "bbox" else ("mask", "masks")
    if not num_gt:
      summary = (
          f"The {len(image_ids)} evaluated images have no ground-truth {plural} "
          f"({self.annotation_file or 'the eval records'}): COCO AP and AR are undefined "
          "and reported as -1. Check EVAL_FILE_PATTERN (and train.annotation_file): "
          "evaluation needs annotated images.")
      logging.warning(summary)
      return ({name: UNDEFINED for name in METRIC_NAMES},
              {n: UNDEFINED for n in self.category_names.values()}, summary)
    if not results:  # COCO's loadRes cannot take an empty list; nothing was found
      return ({name: 0.0 for name in METRIC_NAMES}, self._per_class_zero(gt),
              f"No detections: every ground-truth {what} is missed.")
    result = run_cocoeval(gt, results, image_ids, self.backend, iou_type)
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, result.stats)}
    # precision: [IoU thresholds, recall points, categories, area ranges, max dets]
    precision = result.precision[:, :, :, 0, -1]
    per_class = {}
    for k, category_id in enumerate(result.category_ids):
      values = precision[:, :, k]
      values = values[values > -1]
      per_class[self.category_names.get(category_id, str(category_id))] = (
          float(values.mean()) if values.size else UNDEFINED)
    return metrics, per_class, result.summary

  def _per_class_zero(self, gt: dict) -> dict:
    """0 for the categories with ground truth among the evaluated images, else -1."""
    present = {a["category_id"] for a in gt["annotations"] if a["image_id"] in self._image_ids}
    return {self.category_names.get(c["id"], str(c["id"])):
            0.0 if c["id"] in present else UNDEFINED for c in gt["categories"]}


def _with_segmentations(dataset: dict, image_ids: set) -> dict:
  """The annotation file for mask evaluation: an evaluated image's annotation without a
  `segmentation` gets its box as a polygon (what create_coco_tfrecord --include_masks writes
  for it), counted in a warning."""
  boxed, annotations = 0, []
  for ann in dataset.get("annotations", []):
    if "segmentation" not in ann and ann.get("image_id") in image_ids:
      x, y, w, h = (float(v) for v in ann["bbox"])
      ann = dict(ann, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])
      boxed += 1
    annotations.append(ann)
  if boxed:
    logging.warning("Mask evaluation: %d annotation(s) of the evaluated images have no "
                    "segmentation; their boxes stand in as masks.", boxed)
  return dict(dataset, annotations=annotations)


def format_metrics(metrics: dict, nms_mode: str) -> str:
  """A two-row table of the 12 COCO numbers."""
  header = " ".join(f"{name:>6s}" for name in METRIC_NAMES)
  values = " ".join(f"{metrics[name]:6.3f}" for name in METRIC_NAMES)
  return f"COCO box metrics ({nms_mode} NMS)\n{header}\n{values}"
