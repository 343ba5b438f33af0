"""Matching and box coding against an independent numpy implementation and check values."""
import numpy as np
import tensorflow as tf

from detlab.detection.anchors import AnchorConfig
from detlab.detection.targets import BACKGROUND, AnchorTargetAssigner, decode_boxes


def _iou(anchors, boxes):
  y1 = np.maximum(anchors[:, None, 0], boxes[None, :, 0])
  x1 = np.maximum(anchors[:, None, 1], boxes[None, :, 1])
  y2 = np.minimum(anchors[:, None, 2], boxes[None, :, 2])
  x2 = np.minimum(anchors[:, None, 3], boxes[None, :, 3])
  inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
  return inter / (area(anchors)[:, None] + area(boxes)[None, :] - inter)


def _encode(box, anchor):
  ha, wa = anchor[2] - anchor[0], anchor[3] - anchor[1]
  h, w = box[2] - box[0], box[3] - box[1]
  return np.array([((box[0] + box[2]) - (anchor[0] + anchor[2])) / 2 / ha,
                   ((box[1] + box[3]) - (anchor[1] + anchor[3])) / 2 / wa,
                   np.log(h / ha), np.log(w / wa)])


def test_coder_check_value():
  anchor = np.array([0, 0, 32, 32], np.float32)
  box = np.array([4, 8, 36, 30], np.float32)
  np.testing.assert_allclose(_encode(box, anchor), [0.125, 0.09375, 0.0, -0.374693], atol=1e-6)
  decoded = decode_boxes(tf.constant([[0.125, 0.09375, 0.0, -0.374693]]), tf.constant([anchor]))
  np.testing.assert_allclose(decoded.numpy()[0], box, atol=1e-4)


def test_matching_equals_numpy_argmax_with_forced_matches():
  config = AnchorConfig(image_size=128)
  anchors = config.boxes().numpy()
  # A large box, a medium one, and a tiny one that matches nothing at IoU >= 0.5.
  boxes = np.array([[10, 10, 90, 70], [60, 64, 100, 120], [3, 100, 9, 106]], np.float32)
  classes = np.array([2, 0, 1])
  cls, box = AnchorTargetAssigner(config)(tf.constant(boxes), tf.constant(classes))
  cls, box = cls.numpy(), box.numpy()

  iou = _iou(anchors, boxes)
  best_gt = iou.argmax(1)
  expected = np.where(iou.max(1) >= 0.5, classes[best_gt], BACKGROUND)
  for g in range(len(boxes)):  # forced match: each box claims its best anchor
    expected[iou[:, g].argmax()] = classes[g]
    best_gt[iou[:, g].argmax()] = g
  assert iou[:, 2].max() < 0.5 and (expected == 1).sum() == 1
  np.testing.assert_array_equal(cls, expected)
  positive = np.nonzero(expected >= 0)[0]
  want = np.stack([_encode(boxes[best_gt[i]], anchors[i]) for i in positive])
  np.testing.assert_allclose(box[positive], want, atol=1e-4)
  assert not box[expected < 0].any()


def test_image_without_boxes_is_all_background():
  config = AnchorConfig(image_size=128)
  cls, box = AnchorTargetAssigner(config)(tf.zeros([0, 4]), tf.zeros([0], tf.int32))
  assert (cls.numpy() == BACKGROUND).all() and cls.shape[0] == config.num_anchors
