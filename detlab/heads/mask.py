"""Instance mask head: RoIAlign crops of the BiFPN levels -> an M x M mask logit per box.

Mask R-CNN's branch (He et al., 2017, with the FPN level assignment of Lin et al., 2017) in
EfficientDet's head style. The RoIAlign is the Model Garden's (`MultilevelROIAligner`: level
k = floor(4 + log2(sqrt(wh) / 224)) clipped to the pyramid, bilinear samples); the tower is
detlab's own, not `official.vision.modeling.heads.MaskHead`: that head's full 3x3 convs and
per-class 1x1 predictor cost about 3 GMACs for 100 detections at D0's 64 channels and 90
classes, twice the detector itself, where the EfficientDet paper's separable convs, BN and
swish (as in its class/box/segmentation heads) and a class-agnostic predictor (Mask R-CNN,
table 2c: 29.7 mask AP against 30.3 class-specific) keep the branch near a quarter of it.

  crop (M/2 x M/2 x C) -> repeats x [separable 3x3 conv `width` -> BN -> swish] -> then
  upsample="transposed" (Mask R-CNN's): 2x2 transposed conv stride 2 (`width`) -> BN ->
      swish -> 1x1 conv -> M x M logits;
  upsample="bilinear": 1x1 conv at M/2 x M/2 -> the logits resized bilinearly to M x M
  (one map, or one per class: the box's class is gathered before any upsampling).
The predictor runs in float32 under mixed precision, as the detection predictors do.

Cost at D0 (64 channels, 512 px, 100 boxes, CPU, profiled by node): the transposed form's
M x M stage (transposed conv, its BN and swish, the predictor on a [100, 28, 28, 64] tensor,
memory-bound) was about half the branch's kernel time; "bilinear" drops it (0.708 -> 0.378
G multiply-adds), leaving the tower (~60 %) and the RoIAlign (~35 %: tfm's gather-based one,
kept: it compiles under XLA/TPU with static shapes).
"""
import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.layers.roi_aligner import MultilevelROIAligner

from detlab.layers import batch_norm

UPSAMPLE = ("transposed", "bilinear")


@gin.register(module="detlab.heads")
class MaskHead(keras.layers.Layer):
  """call(features {level: [B, H, W, C]}, boxes [B, N, 4] y1 x1 y2 x2 input pixels,
  classes [B, N] int 0-based) -> float32 mask logits [B, N, M, M], box-relative (the
  box's extent maps onto the M x M grid)."""

  def __init__(self, num_classes: int, width: int = 64, repeats: int = 4, mask_size: int = 28,
               class_agnostic: bool = True, sync_bn: bool = False,
               upsample: str = "transposed", **kwargs):
    super().__init__(**kwargs)
    if mask_size % 2:
      raise ValueError(f"MaskHead.mask_size must be even (RoIAlign crops mask_size / 2 and "
                       f"the upsampling doubles it), got {mask_size}.")
    if num_classes < 1 or repeats < 0 or width < 1:
      raise ValueError(f"MaskHead: num_classes ({num_classes}) and width ({width}) must be "
                       f">= 1, repeats ({repeats}) >= 0.")
    if upsample not in UPSAMPLE:
      raise ValueError(f"MaskHead.upsample must be one of {UPSAMPLE}, got {upsample!r}.")
    self.num_classes, self.width, self.repeats = num_classes, width, repeats
    self.upsample_mode = upsample
    self.mask_size, self.class_agnostic = mask_size, class_agnostic
    self.roi_aligner = MultilevelROIAligner(crop_size=mask_size // 2, sample_offset=0.5,
                                            name="roi_align")
    # Bias off where a BN follows (it has its own offset).
    self.convs = [keras.layers.SeparableConv2D(width, 3, padding="same", use_bias=False,
                                               name=f"conv{i}") for i in range(repeats)]
    self.bns = [batch_norm(f"bn{i}", synchronized=sync_bn) for i in range(repeats)]
    if upsample == "transposed":
      self.upsample = keras.layers.Conv2DTranspose(width, 2, strides=2, use_bias=False,
                                                   name="upsample")
      self.upsample_bn = batch_norm("upsample_bn", synchronized=sync_bn)
    self.predictor = keras.layers.Conv2D(1 if class_agnostic else num_classes, 1,
                                         dtype="float32", name="predictor")

  def call(self, features, boxes, classes, training=None):
    crops = self.roi_aligner(features, tf.cast(boxes, tf.float32))  # [B, N, m, m, C]
    batch, count = tf.shape(crops)[0], tf.shape(crops)[1]
    half, channels = self.mask_size // 2, crops.shape[-1]
    x = tf.reshape(crops, [-1, half, half, channels])
    x = tf.cast(x, self.compute_dtype)
    for conv, bn in zip(self.convs, self.bns):
      x = tf.nn.swish(bn(conv(x), training=training))
    if self.upsample_mode == "transposed":
      x = tf.nn.swish(self.upsample_bn(self.upsample(x), training=training))
    logits = self.predictor(x)  # [B * N, m, m, 1 or K] float32 (m = M, or M / 2: bilinear)
    if not self.class_agnostic:  # the box's class map only, before any upsampling
      index = tf.clip_by_value(tf.cast(tf.reshape(classes, [-1]), tf.int32), 0,
                               self.num_classes - 1)
      logits = tf.gather(logits, index[:, None], axis=-1, batch_dims=1)
    if self.upsample_mode == "bilinear":
      logits = tf.image.resize(logits, [self.mask_size, self.mask_size], method="bilinear")
    return tf.reshape(logits, [batch, count, self.mask_size, self.mask_size])

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes, "width": self.width,
            "repeats": self.repeats, "mask_size": self.mask_size,
            "class_agnostic": self.class_agnostic, "upsample": self.upsample_mode}
