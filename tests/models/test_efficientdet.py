"""EfficientDet-D0 assembly: the reference parameter count, output layout, prior bias."""
import math

import numpy as np
import pytest
import tensorflow as tf

from detlab.backbones.efficientnet import efficientnet_b0
from detlab.models.efficientdet import efficientdet


@pytest.fixture(scope="module")
def d0_coco():
  # Parameter counts do not depend on the image size: build small.
  return efficientdet(efficientnet_b0, num_classes=90, image_size=128)


def test_d0_with_90_classes_has_the_reference_parameter_count(d0_coco):
  assert d0_coco.count_params() == 3_927_203


def test_outputs_are_per_level_anchor_major_and_flatten_in_anchor_order(d0_coco):
  images = tf.zeros([2, 128, 128, 3])
  class_outputs, box_outputs = d0_coco(images, training=False)
  assert sorted(class_outputs, key=int) == ["3", "4", "5", "6", "7"]
  for level in range(3, 8):
    side = math.ceil(128 / 2**level)
    assert tuple(class_outputs[str(level)].shape) == (2, side, side, 9 * 90)
    assert tuple(box_outputs[str(level)].shape) == (2, side, side, 9 * 4)
  cls, box = d0_coco.flatten_outputs(class_outputs, box_outputs)
  assert tuple(cls.shape) == (2, d0_coco.anchors.num_anchors, 90)
  assert tuple(box.shape) == (2, d0_coco.anchors.num_anchors, 4)
  # Anchor 1 at the first location of level 3 is channels 90..179 of that pixel.
  np.testing.assert_array_equal(cls[:, 1, :].numpy(),
                                class_outputs["3"][:, 0, 0, 90:180].numpy())


def test_class_prior_bias(d0_coco):
  bias = d0_coco.class_net.predictor.bias.numpy()
  np.testing.assert_allclose(bias, -math.log((1 - 0.01) / 0.01), rtol=1e-6)
  np.testing.assert_allclose(bias[0], -4.59512, atol=1e-5)


def test_head_convs_are_shared_and_batch_norms_are_per_level(d0_coco):
  net = d0_coco.class_net
  assert len(net.convs) == 3 and len(net.bns) == 3 and len(net.bns[0]) == 5
  names = {w.name for w in net.weights}
  assert sum("bn0_level" in n and "gamma" in n for n in names) == 5
