"""Anchor target assignment, run per image inside the input pipeline (static shapes after).

Matching (reference): IoU argmax, matched >= 0.5, unmatched < 0.5, every ground-truth box
forced onto its best anchor; unmatched anchors are background. Box targets use the coder
without scale factors: ty = (yc-yca)/ha, tx = (xc-xca)/wa, th = log(h/ha), tw = log(w/wa).
tfm's AnchorLabeler implements exactly this (BoxMatcher with force_match_for_each_col and
thresholds [0.5, 0.5], FasterRcnnBoxCoder with scale_factors=None), so it is reused.
"""
import tensorflow as tf
from official.vision.ops import anchor as tfm_anchor
from official.vision.ops import box_ops

from detlab.detection.anchors import AnchorConfig

BACKGROUND = -1


class AnchorTargetAssigner:
  """Maps ground truth to per-anchor class ids and encoded box targets."""

  def __init__(self, anchor_config: AnchorConfig, match_threshold: float = 0.5,
               unmatched_threshold: float = 0.5):
    self._config = anchor_config
    self._multilevel = anchor_config.multilevel_boxes()
    self._labeler = tfm_anchor.AnchorLabeler(match_threshold, unmatched_threshold,
                                             box_coder_weights=None)

  def __call__(self, boxes: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """boxes: [M, 4] [y1, x1, y2, x2] pixels of the model input; classes: [M] int (0-based).

    Returns class targets [N] int32 (BACKGROUND = -1 for unmatched anchors) and box targets
    [N, 4] float32 (zeros where unmatched), N = number of anchors.
    """
    classes = tf.cast(tf.reshape(classes, [-1, 1]), tf.int32)
    cls_targets, box_targets, _, _, _ = self._labeler.label_anchors(
        self._multilevel, tf.cast(boxes, tf.float32), classes)
    levels = range(self._config.min_level, self._config.max_level + 1)
    cls_flat = tf.concat([tf.reshape(cls_targets[str(l)], [-1]) for l in levels], 0)
    box_flat = tf.concat([tf.reshape(box_targets[str(l)], [-1, 4]) for l in levels], 0)
    positive = cls_flat >= 0
    box_flat = tf.where(positive[:, None], box_flat, tf.zeros_like(box_flat))
    cls_flat = tf.where(positive, cls_flat, BACKGROUND)
    return cls_flat, box_flat


def decode_boxes(box_outputs: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
  """Inverse of the target coder. box_outputs [..., N, 4] (ty, tx, th, tw); anchors [N, 4].

  Returns [y1, x1, y2, x2] pixels, float32.
  """
  return box_ops.decode_boxes(tf.cast(box_outputs, tf.float32), anchors)
