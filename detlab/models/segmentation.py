"""Semantic segmentation model: backbone -> BiFPN P2..P7 -> segmentation head on P2.

The EfficientDet paper's segmentation variant (appendix 1.2: D4-based, B4 backbone, BiFPN
width 128, head width 256, both repeated 3 times). Attributes are named as in EfficientDet
(`.backbone`, `.fpn`), so a detector's and a segmenter's checkpoints initialise each other's
backbones (`init_mode='backbone'`).
"""
import gin
import tensorflow as tf
import tf_keras as keras

from detlab.heads.segmentation import SegmentationHead
from detlab.models.pyramid import bifpn_pyramid
from detlab.necks.bifpn import BiFPN


class Segmenter(keras.Model):
  """Images [B, S, S, 3] (the backbone's input convention) -> float32 logits [B, S, S, K]."""

  def __init__(self, backbone: keras.Model, num_classes: int, image_size: int,
               fpn_width: int = 128, fpn_cells: int = 3, head_width: int = 256,
               head_repeats: int = 3, min_level: int = 2, max_level: int = 7,
               fusion: str = "fast", sync_bn: bool = False, **kwargs):
    super().__init__(**kwargs)
    if backbone.min_level > min_level:
      raise ValueError(f"segmenter.min_level={min_level} but the backbone's finest level is "
                       f"{backbone.min_level}; set segmenter.min_level >= {backbone.min_level}.")
    self.backbone = backbone
    self.num_classes, self.image_size = num_classes, image_size
    self.min_level, self.max_level = min_level, max_level
    # Only P2 is read: the last cell builds just the nodes P2 depends on (no dead weights).
    self.fpn = BiFPN(fpn_width, fpn_cells, min_level=min_level, max_level=max_level,
                     fusion=fusion, sync_bn=sync_bn, output_levels=(min_level,), name="bifpn")
    self.seg_head = SegmentationHead(num_classes, head_width, head_repeats, sync_bn=sync_bn,
                                     name="seg_head")

  def pyramid(self, images, training=None) -> dict:
    return bifpn_pyramid(self.backbone, self.fpn, images, self.min_level, training)

  def call(self, images, training=None):
    features = self.pyramid(images, training=training)
    return self.seg_head(features[str(self.min_level)], output_size=tf.shape(images)[1:3],
                         training=training)

  def build_for_size(self) -> "Segmenter":
    self(tf.zeros([1, self.image_size, self.image_size, 3]), training=False)
    return self


def resolve_sync_bn(sync_bn: bool | None) -> bool:
  """None -> on when built under a strategy with more than one replica (as efficientdet)."""
  if sync_bn is None:
    return tf.distribute.get_strategy().num_replicas_in_sync > 1
  return sync_bn


@gin.register(module="detlab.models")
def segmenter(backbone_fn, num_classes: int, image_size: int = 512, fpn_width: int = 128,
              fpn_cells: int = 3, head_width: int = 256, head_repeats: int = 3,
              min_level: int = 2, max_level: int = 7, fusion: str = "fast",
              sync_bn: bool | None = None, **backbone_kwargs) -> Segmenter:
  """Builds the segmenter; defaults are the paper's (BiFPN 128 x 3, head 256 x 3, P2..P7).

  backbone_fn: an uncalled registered backbone builder (e.g. @efficientnet_b4).
  num_classes: K including background; logits are [B, S, S, K].
  """
  sync_bn = resolve_sync_bn(sync_bn)
  backbone = backbone_fn(input_shape=(image_size, image_size, 3), sync_bn=sync_bn,
                         **backbone_kwargs)
  model = Segmenter(backbone, num_classes, image_size, fpn_width, fpn_cells, head_width,
                    head_repeats, min_level, max_level, fusion, sync_bn, name="segmenter")
  return model.build_for_size()
