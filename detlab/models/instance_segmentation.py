"""EfficientDet with an instance-mask branch (heads/mask.py) on its BiFPN levels.

Any detlab detector (every backbone, D0-D7x: whatever `efficientdet` builds) gains the branch
by `with_mask_head`: the detection half is the detector itself (the same layers, variables,
names and outputs), so a detector's checkpoint initialises it and the box metrics stay
comparable. The mask branch reads the P3..P7 features the class/box heads read: in training
at the ground-truth boxes (jittered by the input pipeline), at inference at the detections.
"""
import tensorflow as tf
import tf_keras as keras

from detlab.heads.mask import MaskHead
from detlab.models.efficientdet import EfficientDet
from detlab.models.segmentation import resolve_sync_bn


def has_mask_branch(model) -> bool:
  """Whether `model` is an instance-segmentation model (it has `mask_logits`)."""
  return hasattr(model, "mask_logits")


def mask_probabilities(model, features: dict, boxes: tf.Tensor, classes: tf.Tensor,
                       num_detections: tf.Tensor | None = None) -> tf.Tensor:
  """float32 [B, N, M, M] box-relative mask probabilities (sigmoid of `model.mask_logits`,
  inference mode) of an InstanceSegmenter's `features` at `boxes` [B, N, 4] y1 x1 y2 x2 in
  model-input pixels and `classes` [B, N] 0-based: the masks InstanceSegmentationTask.predict
  evaluates and every export serves. num_detections [B] (optional): rows at or past it are
  0 (the SavedModel's padding rows)."""
  masks = tf.sigmoid(tf.cast(model.mask_logits(features, boxes, classes, training=False),
                             tf.float32))
  if num_detections is None:
    return masks
  valid = tf.range(tf.shape(classes)[1])[None, :] < tf.cast(num_detections, tf.int32)[:, None]
  return tf.where(valid[..., None, None], masks, 0.0)


class InstanceSegmenter(EfficientDet):
  """call(images) -> (class_outputs, box_outputs, features {str(level): [B, h, w, C]});
  mask_logits(features, boxes, classes) -> float32 [B, N, M, M] box-relative mask logits.

  Built around a built EfficientDet: its backbone, BiFPN and heads are taken over under
  the same attribute names (checkpoints line up), not made again; EfficientDet's own
  __init__, which would make new ones, is skipped."""

  def __init__(self, detector: EfficientDet, mask_head: MaskHead, **kwargs):
    keras.Model.__init__(self, name=kwargs.pop("name", detector.name), **kwargs)  # pylint: disable=non-parent-init-called
    self.backbone, self.anchors = detector.backbone, detector.anchors
    self.num_classes = detector.num_classes
    self.fpn, self.class_net, self.box_net = detector.fpn, detector.class_net, detector.box_net
    self.mask_head = mask_head

  @property
  def mask_size(self) -> int:
    return self.mask_head.mask_size

  def call(self, images, training=None):
    features = self.pyramid(images, training=training)
    return (self.class_net(features, training=training),
            self.box_net(features, training=training), features)

  def mask_logits(self, features, boxes, classes, training=None):
    """boxes [B, N, 4] y1 x1 y2 x2 in input pixels; classes [B, N] 0-based."""
    return self.mask_head(features, boxes, classes, training=training)

  def build_for_size(self) -> "InstanceSegmenter":
    size = self.anchors.image_size
    _, _, features = self(tf.zeros([1, size, size, 3]), training=False)
    self.mask_logits(features, tf.constant([[[0.0, 0.0, size / 2, size / 2]]]),
                     tf.zeros([1, 1], tf.int32), training=False)
    return self


def with_mask_head(detector: EfficientDet, mask_size: int = 28, width: int | None = None,
                   repeats: int = 4, class_agnostic: bool = True,
                   sync_bn: bool | None = None,
                   upsample: str = "transposed") -> InstanceSegmenter:
  """`detector` (built) plus a MaskHead of `width` (None: the BiFPN's) channels, `repeats`
  separable convs on mask_size / 2 RoIAlign crops, mask_size x mask_size masks, one per box
  (class_agnostic) or one per class, upsampled from mask_size / 2 by a transposed conv
  (Mask R-CNN's) or bilinearly as logits (MaskHead.upsample). Call inside the strategy
  scope the detector was built in; sync_bn None: on under more than one replica, as the
  detector's."""
  head = MaskHead(detector.num_classes, width or detector.fpn.width, repeats, mask_size,
                  class_agnostic=class_agnostic, sync_bn=resolve_sync_bn(sync_bn),
                  upsample=upsample, name="mask_head")
  return InstanceSegmenter(detector, head).build_for_size()
