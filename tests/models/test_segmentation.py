"""Segmenter (EfficientDet paper's segmentation variant) and the joint detector-segmenter."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.backbones.efficientnet import efficientnet_b0
from detlab.heads.segmentation import SegmentationHead
from detlab.models.efficientdet import efficientdet
from detlab.models.joint import joint_detector_segmenter
from detlab.models.segmentation import segmenter
from detlab.necks.bifpn import BiFPN

SIZE = 64
DET_SIZE = 128  # detection anchors need a multiple of 2^7


@pytest.fixture(scope="module")
def seg_b0():
  return segmenter(efficientnet_b0, num_classes=21, image_size=SIZE)


def test_logits_are_float32_at_the_input_size(seg_b0):
  logits = seg_b0(tf.random.normal([2, SIZE, SIZE, 3]), training=False)
  assert tuple(logits.shape) == (2, SIZE, SIZE, 21)
  assert logits.dtype == tf.float32


def test_bifpn_spans_p2_to_p7_and_only_p2_is_output(seg_b0):
  features = seg_b0.pyramid(tf.zeros([1, SIZE, SIZE, 3]))
  assert list(features) == ["2"]
  assert tuple(features["2"].shape) == (1, SIZE // 4, SIZE // 4, 128)
  assert (seg_b0.fpn.min_level, seg_b0.fpn.max_level) == (2, 7)
  assert len(seg_b0.fpn.extra_levels) == 2  # P6, P7 beyond B0's P5


def test_every_parameter_gets_a_gradient(seg_b0):
  # The last BiFPN cell keeps only what P2 depends on: its 5 top-down nodes.
  assert sum(n is not None for n in seg_b0.fpn.cells[-1]) == 5
  assert all(n is not None for n in seg_b0.fpn.cells[0])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(seg_b0(tf.random.normal([1, SIZE, SIZE, 3]), training=True) ** 2)
  grads = tape.gradient(loss, seg_b0.trainable_variables)
  assert [v.name for v, g in zip(seg_b0.trainable_variables, grads) if g is None] == []


def test_pruned_bifpn_equals_the_full_one_on_p2():
  inputs = {str(l): tf.random.normal([1, 2**(7 - l), 2**(7 - l), 8]) for l in range(2, 6)}
  full = BiFPN(16, 2, min_level=2, max_level=7)
  pruned = BiFPN(16, 2, min_level=2, max_level=7, output_levels=(2,))
  full_out = full(inputs)
  pruned(inputs)
  by_name = {w.name.split("/", 1)[1]: w for w in full.weights}
  for w in pruned.weights:
    w.assign(by_name[w.name.split("/", 1)[1]])
  np.testing.assert_allclose(pruned(inputs)["2"].numpy(), full_out["2"].numpy(), rtol=1e-6)
  assert len(pruned.weights) < len(full.weights)


def test_bifpn_from_level_2_has_the_general_graph():
  # 6 levels: 5 top-down + 5 bottom-up nodes per cell.
  fpn = BiFPN(16, 1, min_level=2, max_level=7)
  inputs = {str(l): tf.random.normal([1, 2**(7 - l), 2**(7 - l), 8]) for l in range(2, 6)}
  out = fpn(inputs)
  assert len(fpn.cells[0]) == 10
  assert [tuple(out[str(l)].shape[1:3]) for l in range(2, 8)] == [
      (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_parameters_split_into_backbone_bifpn_and_the_papers_head(seg_b0):
  # Head: 3 separable convs (128->256, then 256->256; depthwise 3x3, no bias) + BN
  # (4 x 256 each) + 1x1 conv 256->21 with bias.
  head = (9 * 128 + 128 * 256) + 2 * (9 * 256 + 256 * 256) + 3 * 4 * 256 + 256 * 21 + 21
  assert seg_b0.seg_head.count_params() == head
  assert seg_b0.count_params() == (seg_b0.backbone.count_params()
                                   + seg_b0.fpn.count_params() + head)
  assert seg_b0.count_params() == 4_437_355


def test_head_upsamples_bilinearly_from_the_p2_logits():
  head = SegmentationHead(3, width=8, repeats=1)
  features = tf.random.normal([1, 4, 4, 5])
  full = head(features, output_size=(16, 16))
  x = tf.nn.swish(head.bns[0](head.convs[0](features), training=False))
  coarse = head.classifier(x)
  np.testing.assert_allclose(full.numpy(), tf.image.resize(coarse, (16, 16)).numpy(),
                             rtol=1e-6, atol=1e-6)
  assert tuple(head(features).shape) == (1, 16, 16, 3)  # x4 by default


def test_head_logits_stay_float32_under_mixed_precision():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    head = SegmentationHead(4, width=8, repeats=2)
    features = tf.cast(tf.random.normal([1, 4, 4, 8]), tf.bfloat16)
    logits = head(features)
    assert logits.dtype == tf.float32
    assert head.classifier.compute_dtype == "float32"
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_backbone_checkpoint_of_a_segmenter_loads_into_a_detector(seg_b0, tmp_path):
  # Same `.backbone` attribute and layout as EfficientDet: one initialises the other.
  path = tf.train.Checkpoint(model=seg_b0).save(str(tmp_path / "seg"))
  detector = efficientdet(efficientnet_b0, num_classes=4, image_size=DET_SIZE)
  tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=detector.backbone)).read(
      path).assert_existing_objects_matched()
  for a, b in zip(seg_b0.backbone.weights, detector.backbone.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_joint_model_shares_one_bifpn_between_detection_and_segmentation():
  joint = joint_detector_segmenter(efficientnet_b0, num_classes=4, num_seg_classes=5,
                                   image_size=DET_SIZE)
  det = efficientdet(efficientnet_b0, num_classes=4, image_size=DET_SIZE)
  seg = segmenter(efficientnet_b0, num_classes=5, image_size=SIZE, fpn_width=64)
  cls, box, logits = joint(tf.zeros([2, DET_SIZE, DET_SIZE, 3]), training=False)
  assert sorted(cls, key=int) == ["3", "4", "5", "6", "7"]
  assert tuple(cls["3"].shape) == (2, 16, 16, 9 * 4) and tuple(box["7"].shape) == (2, 1, 1, 36)
  assert tuple(logits.shape) == (2, DET_SIZE, DET_SIZE, 5) and logits.dtype == tf.float32
  # One full BiFPN over P2..P7 (all its outputs are read), the detector's heads, the seg head.
  assert (joint.fpn.min_level, joint.fpn.output_levels) == (2, (2, 3, 4, 5, 6, 7))
  fpn = BiFPN(64, 3, min_level=2, max_level=7)
  fpn(det.backbone(tf.zeros([1, DET_SIZE, DET_SIZE, 3])))
  assert joint.fpn.count_params() == fpn.count_params()
  assert joint.count_params() == (det.count_params() - det.fpn.count_params()
                                  + fpn.count_params() + seg.seg_head.count_params())
  flat_cls, _ = joint.flatten_outputs(cls, box)
  assert flat_cls.shape[1] == joint.anchors.num_anchors


def test_gin_files_build_the_papers_segmenters():
  import gin  # pylint: disable=import-outside-toplevel
  from detlab import config  # pylint: disable=import-outside-toplevel
  for name, backbone, size in [("segmentation_d0.gin", "efficientnet_b0", 512),
                               ("segmentation_d4.gin", "efficientnet_b4", 1024),
                               ("segmentation_d0_shapes.gin", "efficientnet_b0", 128)]:
    gin.clear_config()
    config.parse_gin([name], [])
    assert gin.query_parameter("segmenter.backbone_fn").selector == backbone
    assert gin.query_parameter("%IMAGE_SIZE") == size
    assert gin.query_parameter("segmenter.fpn_width") == 128
    assert gin.query_parameter("segmenter.head_width") == 256
  assert gin.query_parameter("%NUM_CLASSES") == 5  # shapes: background + 4
  with gin.unlock_config():
    gin.bind_parameter("%IMAGE_SIZE", 64)
  model = gin.get_configurable("segmenter")()
  # The 21-class count less 16 classes x (256 weights + 1 bias) of the 1x1 classifier.
  assert model.count_params() == 4_437_355 - 16 * 257
  gin.clear_config()


def test_input_convention_is_found_through_the_backbone(seg_b0):
  from detlab.backbones import input_convention  # pylint: disable=import-outside-toplevel
  from detlab.backbones.conventions import IMAGENET_MEAN_STD  # pylint: disable=import-outside-toplevel
  assert input_convention(seg_b0).mean == IMAGENET_MEAN_STD.mean
