"""Semantic segmentation head on the finest BiFPN level (EfficientDet paper, appendix 1.2).

The paper keeps P2..P7 in the BiFPN and classifies pixels from P2 only:
`repeats` x [separable 3x3 conv `width` -> BN -> swish], a 1x1 conv to `num_classes` logits,
then bilinear upsampling x4 (P2 is 1/4 of the input) to the input size.
The 1x1 classifier and the upsampling run in float32 under mixed precision, as the detection
predictors do (low-precision logits would tie at class boundaries).
"""
import gin
import tensorflow as tf
import tf_keras as keras

from detlab.layers import batch_norm


@gin.register(module="detlab.heads")
class SegmentationHead(keras.layers.Layer):
  """P2 features [B, ceil(S/4), ceil(S/4), C] -> float32 logits [B, H, W, num_classes].

  call(features, output_size=None): `output_size` (H, W) is the input image size; None gives
  4x the feature size (the x4 of the paper's head).
  """

  def __init__(self, num_classes: int, width: int = 256, repeats: int = 3,
               sync_bn: bool = False, **kwargs):
    super().__init__(**kwargs)
    if num_classes < 1:
      raise ValueError(f"SegmentationHead.num_classes must be >= 1, got {num_classes}.")
    self.num_classes, self.width, self.repeats = num_classes, width, repeats
    # Bias off: each conv feeds a BN, which has its own offset.
    self.convs = [keras.layers.SeparableConv2D(width, 3, padding="same", use_bias=False,
                                               name=f"conv{i}") for i in range(repeats)]
    self.bns = [batch_norm(f"bn{i}", synchronized=sync_bn) for i in range(repeats)]
    self.classifier = keras.layers.Conv2D(num_classes, 1, padding="same", use_bias=True,
                                          dtype="float32", name="classifier")

  def call(self, features, output_size=None, training=None):
    x = features
    for conv, bn in zip(self.convs, self.bns):
      x = tf.nn.swish(bn(conv(x), training=training))
    logits = self.classifier(x)  # casts x to float32 (the layer's dtype)
    if output_size is None:
      output_size = tf.shape(logits)[1:3] * 4
    return tf.image.resize(logits, output_size, method="bilinear")
