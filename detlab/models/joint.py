"""Joint detection + semantic segmentation: one BiFPN feeds EfficientDet's class/box heads and
the segmentation head (what google/automl's `seg_num_classes` path builds but cannot train,
google/automl#723).

The BiFPN spans P2..P7 (the segmentation head reads P2); the detection heads and anchors stay
on P3..P7 as in EfficientDet, so the detection outputs keep their layout and flatten order.
"""
import gin
import tensorflow as tf

from detlab.detection.anchors import AnchorConfig
from detlab.heads.segmentation import SegmentationHead
from detlab.models.efficientdet import EfficientDet
from detlab.models.pyramid import bifpn_pyramid
from detlab.models.segmentation import resolve_sync_bn
from detlab.necks.bifpn import BiFPN


class JointDetectorSegmenter(EfficientDet):
  """call() -> (class_outputs, box_outputs, segmentation logits [B, S, S, K_seg] float32)."""

  def __init__(self, backbone, anchors: AnchorConfig, num_classes: int,
               num_seg_classes: int, fpn_width: int, fpn_cells: int, head_repeats: int,
               seg_head_width: int = 256, seg_head_repeats: int = 3, seg_min_level: int = 2,
               fusion: str = "fast", sync_bn: bool = False, **kwargs):
    super().__init__(backbone, anchors, num_classes, fpn_width, fpn_cells, head_repeats,
                     fusion=fusion, sync_bn=sync_bn, **kwargs)
    if seg_min_level >= anchors.min_level:
      raise ValueError(f"seg_min_level ({seg_min_level}) must be below the detection "
                       f"min_level ({anchors.min_level}).")
    self.seg_min_level = seg_min_level
    # Replaces EfficientDet's (still unbuilt, variable-free) P3..P7 BiFPN by one over
    # P2..P7 under the same attribute name, so `model/fpn/...` checkpoints line up.
    self.fpn = BiFPN(fpn_width, fpn_cells, min_level=seg_min_level,
                     max_level=anchors.max_level, fusion=fusion, sync_bn=sync_bn,
                     name="bifpn")
    self.seg_head = SegmentationHead(num_seg_classes, seg_head_width, seg_head_repeats,
                                     sync_bn=sync_bn, name="seg_head")

  def pyramid(self, images, training=None) -> dict:
    """BiFPN features for levels seg_min_level..max_level."""
    return bifpn_pyramid(self.backbone, self.fpn, images, self.seg_min_level, training)

  def call(self, images, training=None):
    features = self.pyramid(images, training=training)
    detection = {k: v for k, v in features.items() if int(k) >= self.anchors.min_level}
    seg = self.seg_head(features[str(self.seg_min_level)],
                        output_size=tf.shape(images)[1:3], training=training)
    return (self.class_net(detection, training=training),
            self.box_net(detection, training=training), seg)


@gin.register(module="detlab.models")
def joint_detector_segmenter(backbone_fn, num_classes: int = 90, num_seg_classes: int = 21,
                             image_size: int = 512, fpn_width: int = 64, fpn_cells: int = 3,
                             head_repeats: int = 3, seg_head_width: int = 256,
                             seg_head_repeats: int = 3, seg_min_level: int = 2,
                             fusion: str = "fast", min_level: int = 3, max_level: int = 7,
                             num_scales: int = 3, aspect_ratios=(1.0, 2.0, 0.5),
                             anchor_scale: float = 4.0,
                             sync_bn: bool | None = None) -> JointDetectorSegmenter:
  """EfficientDet (defaults: D0) whose BiFPN also spans P2 for a segmentation head."""
  sync_bn = resolve_sync_bn(sync_bn)
  anchors = AnchorConfig(image_size=image_size, min_level=min_level, max_level=max_level,
                         num_scales=num_scales, aspect_ratios=tuple(aspect_ratios),
                         anchor_scale=anchor_scale)
  backbone = backbone_fn(input_shape=(image_size, image_size, 3), sync_bn=sync_bn)
  model = JointDetectorSegmenter(backbone, anchors, num_classes, num_seg_classes, fpn_width,
                                 fpn_cells, head_repeats, seg_head_width, seg_head_repeats,
                                 seg_min_level, fusion=fusion, sync_bn=sync_bn,
                                 name="efficientdet")
  return model.build_for_size()
