"""Greedy matching of one format's top detections against another's (the INT8 tests).

Comparing top scores alone would pass an INT8 model whose boxes or classes are wrong; a match
here needs the same class, IoU >= a bound and a close score."""
import numpy as np


def as_od_api(result: dict) -> dict:
  """A runner's dict (api.detect's names) under the OD API names match_top_detections reads."""
  return {"detection_boxes": result["boxes"], "detection_scores": result["scores"],
          "detection_classes": result["classes"], "num_detections": result["num_detections"]}


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one [y1, x1, y2, x2] box with each of boxes [M, 4]."""
  y1, x1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
  y2, x2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
  inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def match_top_detections(got: dict, want: dict, image: int, top: int, min_iou: float = 0.9,
                         score_atol: float = 0.05) -> list:
  """Each of `want`'s `top` best detections of batch row `image`, in score order, takes the
  unused detection of `got` with the same class and the highest IoU. Both dicts hold the
  exported models' outputs (detection_boxes [B, D, 4], detection_scores [B, D],
  detection_classes [B, D], num_detections [B]).

  Returns one row per wanted detection: (IoU, score difference, matched), matched when the IoU
  is >= min_iou and the scores differ by at most score_atol.
  """
  count = int(np.asarray(got["num_detections"])[image])
  boxes = np.asarray(got["detection_boxes"])[image, :count]
  scores = np.asarray(got["detection_scores"])[image, :count]
  classes = np.asarray(got["detection_classes"])[image, :count]
  used = np.zeros(count, bool)
  rows = []
  wanted = min(top, int(np.asarray(want["num_detections"])[image]))
  for k in range(wanted):
    box = np.asarray(want["detection_boxes"])[image, k]
    score = float(np.asarray(want["detection_scores"])[image, k])
    same = (classes == np.asarray(want["detection_classes"])[image, k]) & ~used
    iou = np.where(same, box_iou(box, boxes), -1.0)
    best = int(np.argmax(iou)) if count else -1
    if best < 0 or iou[best] < 0:
      rows.append((0.0, float("inf"), False))
      continue
    difference = abs(float(scores[best]) - score)
    matched = iou[best] >= min_iou and difference <= score_atol
    if matched:
      used[best] = True
    rows.append((float(iou[best]), difference, bool(matched)))
  return rows
