"""Anchor geometry against check values computed with google/automl's anchors.py (D0 at 512)."""
import numpy as np
import pytest

from detlab.detection.anchors import AnchorConfig


def test_d0_anchor_boxes_match_reference_check_values():
  config = AnchorConfig(image_size=512)
  boxes = config.boxes().numpy()
  assert boxes.shape == (49104, 4) and config.num_anchors == 49104
  np.testing.assert_allclose(boxes[0], [-12, -12, 20, 20], atol=1e-4)
  np.testing.assert_allclose(boxes[1], [-7.3137, -18.6274, 15.3137, 26.6274], atol=1e-3)
  np.testing.assert_allclose(boxes[2], [-18.6274, -7.3137, 26.6274, 15.3137], atol=1e-3)
  np.testing.assert_allclose(boxes[3], [-16.1587, -16.1587, 24.1587, 24.1587], atol=1e-3)
  np.testing.assert_allclose(boxes[-1], [-126.7006, 160.6497, 1022.7006, 735.3503], atol=1e-3)


@pytest.mark.parametrize("size,max_level,count", [
    (640, 7, 76725), (768, 7, 110484), (896, 7, 150381), (1024, 7, 196416),
    (1280, 7, 306900), (1536, 7, 441936), (1536, 8, 442260)])
def test_anchor_counts_of_d1_to_d7x(size, max_level, count):
  config = AnchorConfig(image_size=size, max_level=max_level)
  assert config.num_anchors == count
  if size <= 768:  # generating the big sets adds nothing the count does not check
    assert config.boxes().shape[0] == count


def test_order_is_level_then_position_then_anchor():
  config = AnchorConfig(image_size=256)
  boxes = config.boxes().numpy()
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  # The 9 anchors of a location share its centre; the next location moves along x by stride 8.
  np.testing.assert_allclose(centres[:9], np.tile([[4, 4]], (9, 1)), atol=1e-4)
  np.testing.assert_allclose(centres[9], [4, 12], atol=1e-4)
  level4_start = 32 * 32 * 9
  np.testing.assert_allclose(centres[level4_start], [8, 8], atol=1e-4)


def test_a_size_that_does_not_tile_the_levels_uses_the_reference_fractional_stride():
  """EfficientDet-Lite0 at 320 (anchor scale 3): level 7 has ceil(320/128) = 3 positions at
  stride 320/3, which sizes its anchors too. Check values from google/automl's anchors.py."""
  config = AnchorConfig(image_size=320, anchor_scale=3.0)
  boxes = config.boxes().numpy()
  assert boxes.shape == (19206, 4) and config.num_anchors == 19206
  np.testing.assert_allclose(boxes[0], [-8, -8, 16, 16], atol=1e-4)
  np.testing.assert_allclose(boxes[1], [-4.4853, -12.9706, 12.4853, 20.9706], atol=1e-3)
  np.testing.assert_allclose(boxes[3], [-11.1191, -11.1191, 19.1191, 19.1191], atol=1e-3)
  np.testing.assert_allclose(boxes[14400 + 5 * 9], [-16, 64, 32, 112], atol=1e-4)  # P4
  np.testing.assert_allclose(boxes[-9], [106.6667, 106.6667, 426.6667, 426.6667], atol=1e-3)
  np.testing.assert_allclose(boxes[-1], [-92.5212, 87.0727, 625.8545, 446.2606], atol=1e-3)
  with pytest.raises(ValueError, match="image_size must be positive"):
    AnchorConfig(image_size=0)
