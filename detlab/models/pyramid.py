"""The feature pyramid every detlab model starts with: backbone -> BiFPN.

One function for the detector, the segmenter and the joint model: they differ only in the
finest level they feed the BiFPN (P3 for EfficientDet, P2 where a segmentation head reads it).
"""
import tf_keras as keras


def bifpn_pyramid(backbone: keras.Model, fpn: keras.layers.Layer, images, min_level: int,
                  training=None) -> dict:
  """BiFPN features {str(l): [B, ceil(S/2^l), ceil(S/2^l), width]} from the backbone's levels
  >= `min_level` (the BiFPN adds the levels above the backbone's last)."""
  features = backbone(images, training=training)
  features = {k: v for k, v in features.items() if int(k) >= min_level}
  return fpn(features, training=training)
