"""EfficientDet with an instance-mask branch (heads/mask.py) on its BiFPN levels.

The detection half is EfficientDet unchanged (same variables, names and outputs), so a
detector's checkpoint initialises it and the box metrics stay comparable. The mask branch
reads the same P3..P7 features the class/box heads read: in training at the ground-truth
boxes (jittered by the input pipeline), at inference at the final detections.
"""
import gin
import tensorflow as tf

from detlab.detection.anchors import AnchorConfig
from detlab.heads.mask import MaskHead
from detlab.models.efficientdet import EfficientDet
from detlab.models.segmentation import resolve_sync_bn


class InstanceSegmenter(EfficientDet):
  """call(images) -> (class_outputs, box_outputs, features {str(level): [B, h, w, C]});
  mask_logits(features, boxes, classes) -> float32 [B, N, M, M] box-relative mask logits."""

  def __init__(self, backbone, anchors: AnchorConfig, num_classes: int, fpn_width: int,
               fpn_cells: int, head_repeats: int, mask_width: int = 64, mask_repeats: int = 4,
               mask_size: int = 28, class_agnostic: bool = True, fusion: str = "fast",
               sync_bn: bool = False, **kwargs):
    super().__init__(backbone, anchors, num_classes, fpn_width, fpn_cells, head_repeats,
                     fusion=fusion, sync_bn=sync_bn, **kwargs)
    self.mask_size = mask_size
    self.mask_head = MaskHead(num_classes, mask_width, mask_repeats, mask_size,
                              class_agnostic=class_agnostic, sync_bn=sync_bn, name="mask_head")

  def call(self, images, training=None):
    features = self.pyramid(images, training=training)
    return (self.class_net(features, training=training),
            self.box_net(features, training=training), features)

  def mask_logits(self, features, boxes, classes, training=None):
    """boxes [B, N, 4] y1 x1 y2 x2 in input pixels; classes [B, N] 0-based."""
    return self.mask_head(features, boxes, classes, training=training)

  def build_for_size(self) -> "InstanceSegmenter":
    super().build_for_size()
    size = self.anchors.image_size
    features = self.pyramid(tf.zeros([1, size, size, 3]), training=False)
    self.mask_logits(features, tf.constant([[[0.0, 0.0, size / 2, size / 2]]]),
                     tf.zeros([1, 1], tf.int32), training=False)
    return self


@gin.register(module="detlab.models")
def instance_segmenter(backbone_fn, num_classes: int = 90, image_size: int = 512,
                       fpn_width: int = 64, fpn_cells: int = 3, head_repeats: int = 3,
                       mask_width: int | None = None, mask_repeats: int = 4,
                       mask_size: int = 28, class_agnostic: bool = True,
                       fusion: str = "fast", min_level: int = 3, max_level: int = 7,
                       num_scales: int = 3, aspect_ratios=(1.0, 2.0, 0.5),
                       anchor_scale: float = 4.0,
                       sync_bn: bool | None = None) -> InstanceSegmenter:
  """EfficientDet (defaults: D0, arguments as models.efficientdet) plus a mask branch:
  mask_width (None: fpn_width) channels, mask_repeats separable convs on mask_size / 2
  RoIAlign crops, mask_size x mask_size masks, one per box (class_agnostic) or per class."""
  sync_bn = resolve_sync_bn(sync_bn)
  anchors = AnchorConfig(image_size=image_size, min_level=min_level, max_level=max_level,
                         num_scales=num_scales, aspect_ratios=tuple(aspect_ratios),
                         anchor_scale=anchor_scale)
  backbone = backbone_fn(input_shape=(image_size, image_size, 3), sync_bn=sync_bn)
  model = InstanceSegmenter(backbone, anchors, num_classes, fpn_width, fpn_cells,
                            head_repeats, mask_width or fpn_width, mask_repeats, mask_size,
                            class_agnostic, fusion=fusion, sync_bn=sync_bn,
                            name="efficientdet")
  return model.build_for_size()
