"""JointTask (detection + segmentation on one BiFPN, google/automl#723's model trained): the
joint loss is the weighted sum of the two single-task losses on the same batch, and the joint
input's flip + scale jitter + crop keep image, boxes and mask aligned."""
import numpy as np
import pytest
import tensorflow as tf

from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.joint_input import JointParser, make_joint_dataset
from detlab.data.segmentation_example import mask_features
from detlab.data.tf_example import build_example, encode_png
from detlab.detection.anchors import AnchorConfig
from detlab.detection.losses import DetectionLoss
from detlab.detection.targets import decode_boxes
from detlab.models.joint import joint_detector_segmenter
from detlab.segmentation.loss import SegmentationLoss
from detlab.tasks.detection import DetectionTask
from detlab.tasks.joint import JointTask
from tiny_backbone import tiny_test_backbone  # the name every test imports it by (tests/conftest.py)

SIZE = 64
# One rectangle (category 2) off-centre to the right, so a flip that missed the mask shows.
HEIGHT, WIDTH, RECT = 80, 96, (12, 58, 44, 86)  # y1, x1, y2, x2


def _record(height=HEIGHT, width=WIDTH, rect=RECT, category=2, with_mask=True) -> bytes:
  y1, x1, y2, x2 = rect
  image = np.zeros([height, width, 3], np.uint8)
  image[y1:y2, x1:x2] = 255
  labels = np.zeros([height, width], np.uint8)
  labels[y1:y2, x1:x2] = category
  example = build_example(encoded_image=encode_png(image), image_format="png", source_id="7",
                          height=height, width=width, boxes_yxyx=[rect],
                          category_ids=[category], category_names=["rectangle"])
  if with_mask:
    for key, feature in mask_features(labels).items():
      example.features.feature[key].CopyFrom(feature)
  return example.SerializeToString()


def _anchors():
  return AnchorConfig(image_size=SIZE, min_level=3, max_level=5)


def _parser(is_training=True, scale=(0.5, 2.0)):
  config = InputConfig(is_training=is_training, aug_scale_min=scale[0], aug_scale_max=scale[1])
  return JointParser(DetectionParser(config, _anchors(), num_classes=4))


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_image_boxes_and_mask_aligned(seed):
  anchors = _anchors()
  out = _parser()(tf.constant(_record()), tf.constant([seed, 11 * seed + 3], tf.int64))
  labels = out["labels"].numpy()
  assert labels.shape == (SIZE, SIZE)
  assert set(np.unique(labels)) <= {0, 2, 255}
  # Image vs mask: away from the rectangle's edge (bilinear blur), bright exactly on class 2.
  # (ImageNet normalisation: white > 0 in every channel, black < 0.)
  bright = out["images"].numpy().mean(-1) > 0
  inside, outside = labels == 2, labels == 0
  interior = np.zeros_like(inside)
  interior[1:-1, 1:-1] = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & \
      inside[1:-1, :-2] & inside[1:-1, 2:]
  exterior = np.zeros_like(outside)
  exterior[1:-1, 1:-1] = outside[1:-1, 1:-1] & outside[:-2, 1:-1] & outside[2:, 1:-1] & \
      outside[1:-1, :-2] & outside[1:-1, 2:]
  assert bright[interior].all() and not bright[exterior].any()
  # Boxes vs mask: the transformed box (decoded from a positive anchor's target) bounds the
  # mask's class-2 pixels to within a pixel (nearest-neighbour rounding).
  positive = np.flatnonzero(out["cls_targets"].numpy() == 1)  # category 2 -> class 1
  if not inside.any():
    assert positive.size == 0  # the crop cut the rectangle away: no box either
    return
  assert positive.size > 0
  box = decode_boxes(out["box_targets"][positive[0]][None],
                     anchors.boxes()[positive[0]][None]).numpy()[0]
  rows, cols = np.nonzero(inside)
  mask_box = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float32)
  np.testing.assert_allclose(box, mask_box, atol=1.01)


def test_eval_form_keeps_the_original_mask_and_pads_the_batch_with_ignore(tmp_path):
  path = str(tmp_path / "joint.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(_record())
    writer.write(_record(height=40, width=50, rect=(5, 5, 30, 20)))
  config = InputConfig(file_pattern=path, is_training=False)
  parser = JointParser(DetectionParser(config, _anchors(), num_classes=4))
  batch = next(iter(make_joint_dataset(parser, 2)))
  original = batch["original_labels"].numpy()
  assert original.shape == (2, HEIGHT, WIDTH)
  assert (original[1, 40:] == 255).all() and (original[1, :40, 50:] == 255).all()
  assert (original[1, 5:30, 5:20] == 2).all()
  assert batch["gt_count"].numpy().tolist() == [1, 1]
  assert batch["labels"].shape == (2, SIZE, SIZE)


def test_record_without_a_semantic_map_is_refused_with_the_fix():
  with pytest.raises(tf.errors.InvalidArgumentError, match="--semantic_maps"):
    _parser()(tf.constant(_record(with_mask=False)), tf.constant([1, 2], tf.int64))


def test_box_only_augmentations_are_refused():
  with pytest.raises(ValueError, match="augmentations"):
    JointTask(model_fn=None, train_input=InputConfig(is_training=True,
                                                     augmentations=[lambda i, b: (i, b)]))


def test_joint_loss_is_the_weighted_sum_of_the_single_task_losses():
  tf.keras.utils.set_random_seed(0)
  model = _tiny_joint_model()
  detection_loss, segmentation_loss = DetectionLoss(), SegmentationLoss()
  task = JointTask(model_fn=lambda: model, seg_loss_weight=0.7,
                   detection_loss=detection_loss, segmentation_loss=segmentation_loss)
  parser = _parser()
  examples = [parser(tf.constant(_record()), tf.constant([s, 5], tf.int64)) for s in range(2)]
  batch = {k: tf.stack([e[k] for e in examples]) for k in examples[0]}
  joint = task.compute_loss(model, batch, training=False)
  class_outputs, box_outputs, logits = model(batch["images"], training=False)
  detection = detection_loss(*model.flatten_outputs(class_outputs, box_outputs),
                             batch["cls_targets"], batch["box_targets"])
  segmentation = segmentation_loss(logits, batch["labels"])
  assert float(segmentation["total"]) > 0 and float(detection["total"]) > 0
  np.testing.assert_allclose(float(joint["total"]), float(detection["total"]) +
                             0.7 * float(segmentation["total"]), rtol=1e-6)
  for name in ("class", "box"):
    np.testing.assert_allclose(float(joint[name]), float(detection[name]), rtol=1e-6)
  np.testing.assert_allclose(float(joint["segmentation"]), float(segmentation["total"]),
                             rtol=1e-6)


def _tiny_joint_model():
  return joint_detector_segmenter(tiny_test_backbone, num_classes=4, num_seg_classes=5,
                                  image_size=SIZE, fpn_width=16, fpn_cells=1, head_repeats=1,
                                  seg_head_width=16, seg_head_repeats=1, max_level=5)


def test_bn_momentum_knob_reaches_every_batch_norm_layer():
  import tf_keras as keras

  def momenta(model):
    return {layer.momentum for layer in model.submodules
            if isinstance(layer, keras.layers.BatchNormalization)}

  assert momenta(JointTask(model_fn=_tiny_joint_model).build_model()) == {0.99}
  assert momenta(JointTask(model_fn=_tiny_joint_model, bn_momentum=0.9).build_model()) == {0.9}
  detection = DetectionTask(model_fn=_tiny_joint_model, bn_momentum=0.5)
  assert momenta(detection.build_model()) == {0.5}
  with pytest.raises(ValueError, match="bn_momentum"):
    JointTask(model_fn=_tiny_joint_model, bn_momentum=1.0).build_model()
