"""Boxes follow the pixels through every geometric training transform (hand-made images).

Each image is black with one bright rectangle whose box is known; after a transform the box
must still tightly contain the bright pixels (within 1.5 px), and be empty when they are gone.
"""
import numpy as np
import pytest
import tensorflow as tf

from detlab.data import augment
from detlab.data.detection_input import DetectionParser, InputConfig, keep_largest_boxes
from detlab.data.mosaic import mosaic
from detlab.detection.anchors import AnchorConfig
from detlab.detection.targets import decode_boxes

TOLERANCE = 1.5  # pixels


def _rectangle_image(height, width, box, colour=(255, 255, 255)):
  image = np.zeros((height, width, 3), np.uint8)
  y1, x1, y2, x2 = box
  image[y1:y2, x1:x2] = colour
  return image


def _extent(mask):
  """[y1, x1, y2, x2] pixel extent of the True pixels, or None."""
  rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
  if not len(rows):
    return None
  return np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float32)


def _assert_box_fits(box, mask, tolerance=TOLERANCE):
  extent = _extent(mask)
  empty = box[2] - box[0] < 1 or box[3] - box[1] < 1
  if extent is None:
    assert empty, f"box {box} but no object pixels left"
    return
  assert not empty, f"object pixels at {extent} but the box {box} is empty"
  np.testing.assert_allclose(box, extent, atol=tolerance)


@pytest.mark.parametrize("name", ["TranslateX_BBox", "TranslateY_BBox", "ShearX_BBox",
                                  "ShearY_BBox", "Rotate_BBox"])
def test_geometric_autoaugment_ops_move_the_box_with_the_pixels(name):
  # Near the left border: a mirrored copy (tfm's fill_mode='reflect') would show up as
  # bright pixels outside the moved box. Rotated, it stays inside the image (a rotated
  # rectangle cut by the border has no tight axis-aligned box).
  height, width, box = 96, 128, [36, 4, 60, 24]
  image = tf.constant(_rectangle_image(height, width, box))
  normalized = tf.constant([box], tf.float32) / [height, width, height, width]
  moved = set()
  for seed in range(6):
    tf.random.set_seed(seed)
    out, boxes = augment.apply_op(name, 1.0, 6, image, normalized, translate_const=60)
    out = out.numpy()
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    pixel_box = boxes.numpy()[0] * [height, width, height, width]
    _assert_box_fits(pixel_box, out.min(-1) > 200)
    moved.add(tuple(np.round(pixel_box)))
    # Vacated pixels are the reference's grey, never mirrored content.
    assert set(np.unique(out)) <= {0, 128, 255}
  assert len(moved) > 1  # both signs of the op were drawn


@pytest.mark.parametrize("policy", ["v0", "v1", "v2", "v3"])
def test_autoaugment_policies_keep_boxes_aligned_and_in_the_image(policy):
  height, width, box = 80, 100, [20, 30, 60, 70]
  image = tf.constant(_rectangle_image(height, width, box))
  boxes = tf.constant([box, [0, 0, 10, 10]], tf.float32)
  step = augment.AutoAugment(policy)
  for seed in range(4):
    tf.random.set_seed(seed)
    out, out_boxes = step(image, boxes)
    assert out.shape == (height, width, 3) and out.dtype == tf.uint8
    assert out_boxes.shape == (2, 4)
    b = out_boxes.numpy()
    assert (b >= 0).all() and (b[:, [0, 2]] <= height).all() and (b[:, [1, 3]] <= width).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()


def test_every_op_builds_and_runs_in_graph_mode():
  # The pipeline runs steps inside dataset.map (graph mode); the tests above run eagerly.
  names = sorted(augment._OPS)  # pylint: disable=protected-access

  @tf.function
  def all_ops(image, boxes):
    for name in names:
      image, boxes = augment.apply_op(name, 1.0, 5, image, boxes)
    return image, boxes

  image = tf.constant(_rectangle_image(64, 80, [10, 10, 40, 50]))
  out, boxes = all_ops(image, tf.constant([[10 / 64, 10 / 80, 40 / 64, 50 / 80]]))
  assert out.shape == (64, 80, 3) and boxes.shape == (1, 4)
  assert ((boxes.numpy() >= 0) & (boxes.numpy() <= 1)).all()
  assert {"BBox_Cutout", "Flip_Only_BBoxes", "ShearX_Only_BBoxes"} <= set(names)


def test_unknown_policy_is_a_clear_error():
  with pytest.raises(ValueError, match="v0"):
    augment.AutoAugment("detection_v9")


def test_randaugment_moves_boxes_with_geometric_ops():
  height, width, box = 96, 96, [30, 20, 70, 50]
  image = tf.constant(_rectangle_image(height, width, box))
  step = augment.RandAugment(num_layers=1, magnitude=5, translate_const=40)
  changed = 0
  for seed in range(12):
    tf.random.set_seed(seed)
    out, boxes = step(image, tf.constant([box], tf.float32))
    b = boxes.numpy()[0]
    # One layer = one op; photometric ones (Invert, Solarize ...) recolour but never move.
    if not np.allclose(b, box):
      changed += 1
      _assert_box_fits(b, out.numpy().min(-1) > 200)
  assert changed > 0


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _mosaic_inputs():
  examples, rng = [], np.random.RandomState(0)
  for k, colour in enumerate(COLOURS):
    height, width = rng.randint(40, 120, 2)
    y1, x1 = rng.randint(0, height // 2), rng.randint(0, width // 2)
    box = [y1, x1, y1 + rng.randint(8, height // 2), x1 + rng.randint(8, width // 2)]
    examples.append({
        "image": tf.constant(_rectangle_image(height, width, box, colour)),
        "boxes": tf.constant([box], tf.float32), "classes": tf.constant([k + 1]),
        "is_crowd": tf.constant([False]), "areas": tf.constant([1.0]),
        "source_id": tf.constant(str(k))})
  return examples


def test_mosaic_boxes_follow_each_image():
  examples, size = _mosaic_inputs(), 64
  seen_cut = False
  for seed in range(8):
    tf.random.set_seed(seed)
    out = mosaic(examples, size)
    image = out["image"].numpy().astype(int)
    assert image.shape == (2 * size, 2 * size, 3)
    classes = out["classes"].numpy().tolist()
    for k, colour in enumerate(COLOURS):
      mask = (np.abs(image - colour) < 60).all(-1)
      box = out["boxes"].numpy()[classes.index(k + 1)] if k + 1 in classes else np.zeros(4)
      _assert_box_fits(box, mask)
    seen_cut |= len(classes) < 4
  # Uncovered canvas is the ImageNet mean colour (0 after normalization).
  corner = mosaic(examples, size, centre=(size // 2, size // 2))["image"].numpy()
  np.testing.assert_array_equal(corner[-1, -1], [124, 116, 104])


def test_resize_jitter_and_crop_move_boxes_with_the_image():
  anchors = AnchorConfig(image_size=128)
  from detlab.data.tf_example import build_example, encode_png
  box = [30, 50, 90, 100]
  example = build_example(
      encoded_image=encode_png(_rectangle_image(120, 160, box)), image_format="png",
      source_id="1", height=120, width=160, boxes_yxyx=[box], category_ids=[1],
      category_names=["a"]).SerializeToString()
  config = InputConfig("unused", is_training=True, flip=False, aug_scale_min=0.5,
                       aug_scale_max=2.0)
  parser = DetectionParser(config, anchors, num_classes=1)
  for seed in range(8):
    tf.random.set_seed(seed)
    out = parser(tf.constant(example))
    positive = out["cls_targets"].numpy() >= 0
    boxes = decode_boxes(out["box_targets"], anchors.boxes()).numpy()[positive]
    # Normalized white ~ +2.2, black ~ -2.1: threshold between them (bilinear edges).
    mask = out["images"].numpy()[..., 0] > 0.0
    _assert_box_fits(boxes.mean(0) if len(boxes) else np.zeros(4), mask)


def test_keep_largest_boxes_drops_the_smallest_and_reports_it(capfd):
  sizes = np.random.RandomState(0).permutation(np.arange(1, 106)).astype(np.float32)
  boxes = np.stack([np.zeros(105), np.zeros(105), sizes, np.ones(105)], -1).astype(np.float32)
  kept, classes = keep_largest_boxes(tf.constant(boxes), tf.range(105), 100, "img7")
  assert kept.shape == (100, 4)
  np.testing.assert_array_equal(np.sort(kept.numpy()[:, 2]), np.arange(6, 106))
  np.testing.assert_array_equal(classes.numpy(), np.sort(classes.numpy()))  # order kept
  np.testing.assert_array_equal(boxes[classes.numpy(), 2], kept.numpy()[:, 2])
  assert "img7 has 105 boxes; kept the 100 largest, dropped 5" in capfd.readouterr().err
  keep_largest_boxes(tf.constant(boxes[:50]), tf.range(50), 100, "few")
  assert "dropped" not in capfd.readouterr().err
