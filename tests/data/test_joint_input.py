"""The joint input applies the detection parser's own geometric draws to the label map: a
parser whose draws are forced (flip, scale jitter, an off-centre crop) moves boxes and mask
together, to where those draws put them; and a seed gives the same draws either way."""
import numpy as np
import tensorflow as tf

from detlab.data.detection_input import DetectionParser, GeometricDraws, InputConfig
from detlab.data.joint_input import JointParser
from detlab.data.segmentation_example import mask_features
from detlab.data.tf_example import build_example, decode_example, encode_png
from detlab.detection.anchors import AnchorConfig
from detlab.detection.targets import decode_boxes

SIZE, HEIGHT, WIDTH, RECT = 64, 80, 96, (12, 58, 44, 86)  # one rectangle right of centre
FLIP, SCALE, CROP = True, 1.6, (0.8, 0.3)


def _record() -> bytes:
  y1, x1, y2, x2 = RECT
  image = np.zeros([HEIGHT, WIDTH, 3], np.uint8)
  image[y1:y2, x1:x2] = 255
  labels = np.zeros([HEIGHT, WIDTH], np.uint8)
  labels[y1:y2, x1:x2] = 2
  example = build_example(encoded_image=encode_png(image), image_format="png", source_id="3",
                          height=HEIGHT, width=WIDTH, boxes_yxyx=[RECT], category_ids=[2],
                          category_names=["rectangle"])
  for key, feature in mask_features(labels).items():
    example.features.feature[key].CopyFrom(feature)
  return example.SerializeToString()


class ForcedDraws(DetectionParser):
  """A detection parser whose geometry is fixed instead of drawn from the seed."""

  def draw_geometry(self, seed=None):
    del seed
    return GeometricDraws(tf.constant(FLIP), tf.constant(SCALE), tf.constant(CROP))


def _config():
  return InputConfig(is_training=True, aug_scale_min=0.5, aug_scale_max=2.0)


def _anchors():
  return AnchorConfig(image_size=SIZE, min_level=3, max_level=5)


def test_mask_and_boxes_follow_the_detection_parsers_draws():
  anchors = _anchors()
  parser = JointParser(ForcedDraws(_config(), anchors, num_classes=4))
  out = parser(tf.constant(_record()), tf.constant([1, 2], tf.int64))
  # Where the forced draws put the rectangle (tfm's resize/crop arithmetic): flipped, resized
  # by min(round(SCALE * SIZE) / side), shifted by the crop offset, clipped to the output.
  y1, x1, y2, x2 = RECT
  x1, x2 = WIDTH - x2, WIDTH - x1
  target = round(SCALE * SIZE)
  scale = min(target / HEIGHT, target / WIDTH)
  scaled = np.round(np.array([HEIGHT, WIDTH]) * scale)
  offset = np.floor((scaled - SIZE) * CROP)
  expected = np.clip([y1 * scale - offset[0], x1 * scale - offset[1],
                      y2 * scale - offset[0], x2 * scale - offset[1]], 0, SIZE)
  positive = np.flatnonzero(out["cls_targets"].numpy() == 1)  # category 2 -> class 1
  assert positive.size > 0
  box = decode_boxes(out["box_targets"][positive[0]][None],
                     anchors.boxes()[positive[0]][None]).numpy()[0]
  np.testing.assert_allclose(box, expected, atol=0.01)
  rows, cols = np.nonzero(out["labels"].numpy() == 2)
  mask_box = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float32)
  np.testing.assert_allclose(mask_box, expected, atol=1.01)  # nearest-neighbour rounding
  bright = out["images"].numpy().mean(-1) > 0  # ImageNet normalisation: white > 0
  assert bright[int(expected[0]) + 2:int(expected[2]) - 2,
                int(expected[1]) + 2:int(expected[3]) - 2].all()


def test_a_seed_gives_the_same_draws_to_parse_and_to_draw_geometry():
  parser = DetectionParser(_config(), _anchors(), num_classes=4)
  data = decode_example(tf.constant(_record()))
  for seed in ([3, 4], [5, 6], [7, 8]):
    seed = tf.constant(seed, tf.int64)
    by_seed = parser.parse(data, seed)
    by_draws = parser.parse(data, draws=parser.draw_geometry(seed))
    for key in ("images", "cls_targets", "box_targets"):
      np.testing.assert_array_equal(by_seed[key].numpy(), by_draws[key].numpy())
