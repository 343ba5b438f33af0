"""Multi-level anchor boxes (EfficientDet / RetinaNet convention).

Reuses tfm's `official.vision.ops.anchor.Anchor`, whose geometry is the reference's: per
location, for octave in 0..num_scales-1, for aspect in aspect_ratios; base size
anchor_scale * stride * 2^(octave/num_scales); centres at stride/2 + k*stride; boxes
[y1, x1, y2, x2] in input pixels, not clipped. Flattened order: level -> (y, x) -> anchor.

An image size that 2^max_level does not divide (EfficientDet-Lite0 at 320, Lite2 at 448) has
ceil(S / 2^l) positions per side at level l, and the reference's anchors.py then uses the
fractional stride S / ceil(S / 2^l) for both the centres and the base size (tfm keeps the
size at 2^l); such sizes follow the reference. Sizes that tile every level use tfm's code as
before (the two agree there: the stride is 2^l).
"""
import dataclasses

import gin
import numpy as np
import tensorflow as tf
from official.vision.ops import anchor as tfm_anchor

ASPECT_RATIOS = (1.0, 2.0, 0.5)


@gin.register(module="detlab.detection")
@dataclasses.dataclass(frozen=True)
class AnchorConfig:
  """Everything that fixes the anchor set of a detector."""
  image_size: int = 512
  min_level: int = 3
  max_level: int = 7
  num_scales: int = 3
  aspect_ratios: tuple = ASPECT_RATIOS
  anchor_scale: float = 4.0

  def __post_init__(self):
    if self.image_size < 1:
      raise ValueError(f"image_size must be positive, got {self.image_size}.")

  @property
  def anchors_per_location(self) -> int:
    return self.num_scales * len(self.aspect_ratios)

  def feature_size(self, level: int) -> int:
    return -(-self.image_size // 2 ** level)

  @property
  def num_anchors(self) -> int:
    return self.anchors_per_location * sum(
        self.feature_size(l) ** 2 for l in range(self.min_level, self.max_level + 1))

  def multilevel_boxes(self) -> dict:
    """{str(level): [h_l, w_l, A*4]} anchor boxes."""
    if self.image_size % 2 ** self.max_level:
      return self._fractional_stride_boxes()
    return tfm_anchor.Anchor(
        min_level=self.min_level, max_level=self.max_level, num_scales=self.num_scales,
        aspect_ratios=list(self.aspect_ratios), anchor_size=self.anchor_scale,
        image_size=(self.image_size, self.image_size)).multilevel_boxes

  def _fractional_stride_boxes(self) -> dict:
    """The reference's anchors (google/automl tf2/anchors.py `_generate_boxes`, float64 then
    float32) at stride S / ceil(S / 2^l) per level."""
    boxes = {}
    for level in range(self.min_level, self.max_level + 1):
      side = self.feature_size(level)
      stride = self.image_size / side
      centres = stride / 2 + stride * np.arange(side)
      y, x = np.meshgrid(centres, centres, indexing="ij")
      per_anchor = []
      for octave in range(self.num_scales):
        for aspect in self.aspect_ratios:
          base = self.anchor_scale * stride * 2 ** (octave / self.num_scales)
          half_x = base * np.sqrt(aspect) / 2
          half_y = base / np.sqrt(aspect) / 2
          per_anchor.append(np.stack([y - half_y, x - half_x, y + half_y, x + half_x], -1))
      boxes[str(level)] = tf.constant(np.concatenate(per_anchor, -1), tf.float32)
    return boxes

  def boxes(self) -> tf.Tensor:
    """All anchors flattened, [num_anchors, 4] float32 [y1, x1, y2, x2] pixels."""
    boxes = self.multilevel_boxes()
    return tf.concat([tf.reshape(boxes[str(l)], [-1, 4])
                      for l in range(self.min_level, self.max_level + 1)], axis=0)
