"""Post-processing: exact top-k, and class-offset NMS equal to a per-class NMS loop."""
import numpy as np
import pytest
import tensorflow as tf

from detlab.detection.postprocess import (PostprocessConfig, image_windows, postprocess,
                                          top_k_pairs)
from detlab.detection.targets import decode_boxes


def testtop_k_pairs_equals_top_k_over_all_pairs():
  logits = tf.random.stateless_normal([2, 500, 7], seed=[1, 2])
  values, anchors, classes = top_k_pairs(logits, 300)
  flat = tf.reshape(logits, [2, -1])
  want_values, want_index = tf.math.top_k(flat, 300)
  for b in range(2):
    got = set(zip(anchors[b].numpy().tolist(), classes[b].numpy().tolist()))
    want = set(zip((want_index[b] // 7).numpy().tolist(), (want_index[b] % 7).numpy().tolist()))
    assert got == want
    np.testing.assert_allclose(np.sort(values[b]), np.sort(want_values[b]))


def _per_class_reference(logits, deltas, anchors, config):
  """Per-class loop: the reference protocol, one NMS call per class."""
  flat = tf.reshape(logits, [-1])
  k = min(config.pre_nms_top_k, flat.shape[0])
  top, index = tf.math.top_k(flat, k)
  num_classes = logits.shape[-1]
  boxes = decode_boxes(tf.gather(deltas, index // num_classes), tf.gather(anchors, index // num_classes))
  scores, classes = tf.sigmoid(top), index % num_classes
  rows = []
  for c in range(num_classes):
    mask = classes == c
    b, s = tf.boolean_mask(boxes, mask), tf.boolean_mask(scores, mask)
    soft = config.nms_mode == "soft"
    sel, sel_scores = tf.image.non_max_suppression_with_scores(
        b, s, config.max_detections, iou_threshold=1.0 if soft else config.iou_threshold,
        score_threshold=config.score_threshold,
        soft_nms_sigma=config.soft_nms_sigma / 2 if soft else 0.0)
    rows += [(float(x), c) for x in sel_scores.numpy()]
  rows.sort(key=lambda r: -r[0])
  return rows[:config.max_detections]


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_offset_nms_equals_per_class_loop(mode):
  rng = np.random.default_rng(0)
  n, num_classes = 400, 5
  centres = rng.uniform(20, 108, (n, 2))
  anchors = np.concatenate([centres - 12, centres + 12], -1).astype(np.float32)
  logits = tf.constant(rng.normal(-2, 2, (1, n, num_classes)), tf.float32)
  deltas = tf.constant(rng.normal(0, 0.2, (1, n, 4)), tf.float32)
  config = PostprocessConfig(pre_nms_top_k=500, max_detections=50, nms_mode=mode)
  out = postprocess(logits, deltas, tf.constant(anchors), 128, config)
  want = _per_class_reference(logits[0], deltas[0], tf.constant(anchors), config)
  num = int(out["num_detections"][0])
  assert num == len(want)
  got = sorted(zip(out["scores"][0, :num].numpy().tolist(),
                   out["classes"][0, :num].numpy().tolist()), key=lambda r: -r[0])
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5)
  assert [g[1] for g in got] == [w[1] for w in want]
  assert (out["boxes"].numpy() >= 0).all() and (out["boxes"].numpy() <= 128).all()


def test_soft_nms_decays_instead_of_removing():
  anchors = tf.constant([[0, 0, 20, 20], [1, 1, 21, 21]], tf.float32)
  logits = tf.constant([[[3.0], [2.0]]])
  deltas = tf.zeros([1, 2, 4])
  hard = postprocess(logits, deltas, anchors, 64, PostprocessConfig(nms_mode="hard"))
  soft = postprocess(logits, deltas, anchors, 64, PostprocessConfig(nms_mode="soft"))
  assert int(hard["num_detections"][0]) == 1
  assert int(soft["num_detections"][0]) == 2
  iou = 361 / (400 + 400 - 361)
  # Gaussian decay exp(-iou^2 / sigma) with the paper's sigma 0.5.
  expected = 1 / (1 + np.exp(-2.0)) * np.exp(-iou ** 2 / 0.5)
  np.testing.assert_allclose(soft["scores"][0, 1].numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_scores_saturated_at_one_are_ranked_by_their_logits(mode):
  """Logits above ~17 all give a float32 sigmoid of exactly 1.0. NMS must still take the
  highest logit first, whatever order the anchors come in: here box A (logit 30) overlaps B
  (24) and C (18), which do not overlap each other. Taken by anchor order instead, B or C
  went first in some orders, and soft-NMS decayed A (a converted COCO D0 gave AP 0.979 in
  the batched eval loop against 1.0 through api.detect on the same images that way)."""
  boxes = np.array([[0, 0, 40, 40], [0, 0, 40, 24], [0, 26, 40, 40]], np.float32)
  logits = np.array([30.0, 24.0, 18.0], np.float32)
  assert (tf.sigmoid(logits).numpy() == 1.0).all()
  # 37 filler anchors far off with low logits, 2 classes and pre_nms_top_k below the pair
  # count, so the candidate selection is a partial top-k, as on a real model.
  filler = np.array([[50, 50 + i % 8, 52, 52 + i % 8] for i in range(37)], np.float32)
  config = PostprocessConfig(nms_mode=mode, pre_nms_top_k=20)
  results = []
  rng = np.random.default_rng(0)
  for _ in range(6):
    order = rng.permutation(40)
    all_boxes = np.concatenate([boxes, filler])[order]
    all_logits = np.stack([np.concatenate([logits, -5.0 - 0.01 * np.arange(37, dtype=np.float32)]),
                           np.full(40, -6.0, np.float32)], axis=-1)[order]
    out = postprocess(tf.constant(all_logits[None]), tf.zeros([1, 40, 4]),
                      tf.constant(all_boxes), 64, config)
    n = int(out["num_detections"][0])
    results.append((out["boxes"][0, :n].numpy(), out["scores"][0, :n].numpy()))
  np.testing.assert_array_equal(results[0][0][0], boxes[0])  # A first, undecayed
  if mode == "soft":  # B and C decayed by A
    assert results[0][1][0] == 1.0 and (results[0][1][1:] < 1.0).all()
  else:  # B (IoU 0.6 with A) removed, C (0.35) kept
    np.testing.assert_array_equal(results[0][0][:2], boxes[[0, 2]])
  for got_boxes, got_scores in results[1:]:
    np.testing.assert_array_equal(got_boxes, results[0][0])
    np.testing.assert_array_equal(got_scores, results[0][1])


def test_extreme_box_does_not_break_nms_of_a_high_class():
  """One wild box (here an anchor of +-1e7 px) must not make the class offsets so large
  (89 x 2e7 today) that float32 (spacing 128 px there) rounds a class's boxes onto each other
  or to points: offsets come from boxes clipped to the image. Class 89: two boxes of IoU 0.9,
  one is suppressed; class 88: two boxes of IoU 1/3, both stay (hard NMS at 0.5)."""
  num_classes = 90
  anchors = tf.constant([[-1e7, -1e7, 1e7, 1e7], [10, 10, 30, 30], [10, 20, 30, 40],
                         [10, 10, 50, 50], [10, 12, 50, 52]], tf.float32)
  logits = np.full((1, 5, num_classes), -10.0, np.float32)
  logits[0, 0, 0] = 3.0                        # the extreme box, class 0
  logits[0, 1, 88] = logits[0, 2, 88] = 2.0    # IoU 200/600
  logits[0, 3, 89], logits[0, 4, 89] = 2.0, 1.5  # IoU 1520/1680
  out = postprocess(tf.constant(logits), tf.zeros([1, 5, 4]), anchors, 64,
                    PostprocessConfig(nms_mode="hard", score_threshold=0.5))
  num = int(out["num_detections"][0])
  classes = out["classes"][0, :num].numpy()
  boxes = out["boxes"][0, :num].numpy()
  assert sorted(classes.tolist()) == [0, 88, 88, 89]
  np.testing.assert_allclose(sorted(map(tuple, boxes[classes == 88].tolist())),
                             [(10, 10, 30, 30), (10, 20, 30, 40)])
  np.testing.assert_allclose(boxes[classes == 89], [[10, 10, 50, 50]])
  np.testing.assert_allclose(boxes[classes == 0], [[0, 0, 64, 64]])


def _boxes(rng, n, low, high):
  """n [y1, x1, y2, x2] boxes with both corners' coordinates in [low, high), y1 < y2, x1 < x2."""
  corners = np.sort(rng.uniform(low, high, (n, 2, 2)), axis=1)
  return np.concatenate([corners[:, 0], corners[:, 1]], -1)


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("where", ["outside_input", "in_pad"])
def test_boxes_that_clipping_empties_are_dropped_before_nms(mode, where):
  """Boxes wholly outside the image clip to zero area: they must not take output slots (an
  untrained D0 through api.detect gave 38 of 100 such rows) but leave them to the boxes
  inside, which come out as the per-class reference path gives them alone. "outside_input":
  beyond the 128-px input; "in_pad": inside the input but below the 80-px-high window of a
  letterboxed image (image_windows of its image_info)."""
  rng = np.random.default_rng(3)
  inside = _boxes(rng, 20, 10, 70)
  if where == "outside_input":
    outside = _boxes(rng, 30, 140, 200)
    windows, info = None, None
  else:
    outside = _boxes(rng, 30, 0, 40) + np.float32([85, 0, 85, 0])  # y from 85 to 125
    # image_info of a 100 x 160 image resized by 0.8 to 80 x 128, padded to 128 x 128.
    info = tf.constant([[[100, 160], [128, 128], [0.8, 0.8], [0, 0]]], tf.float32)
    windows = image_windows(info, 128)
    np.testing.assert_allclose(windows, [[0, 0, 80, 128]])
  anchors = tf.constant(np.concatenate([inside, outside]), tf.float32)
  logits = rng.normal(-1, 1, (1, 50, 3)).astype(np.float32)
  logits[0, 20:] += 4.0  # the outside boxes score highest
  config = PostprocessConfig(max_detections=30, nms_mode=mode)
  out = postprocess(tf.constant(logits), tf.zeros([1, 50, 4]), anchors, 128, config, windows)
  num = int(out["num_detections"][0])
  boxes = out["boxes"][0, :num].numpy()
  assert ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0).all()
  want = _per_class_reference(tf.constant(logits[0, :20]), tf.zeros([20, 4]), anchors[:20],
                              config)
  got = sorted(zip(out["scores"][0, :num].numpy().tolist(),
                   out["classes"][0, :num].numpy().tolist()), key=lambda r: -r[0])
  assert num == len(want) == 30  # the slots the empty boxes took before are filled
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5)
  assert [g[1] for g in got] == [w[1] for w in want]
