"""EfficientDet class and box heads: convs shared across levels, BN per level.

`repeats` x [separable 3x3 conv (shared) -> BN (one per level) -> activation (swish;
EfficientDet-Lite: relu6)], then a separable 3x3
predictor: class head A*K channels with prior bias -log((1 - 0.01) / 0.01), box head A*4.
The predictors compute in float32 under mixed precision (outputs are float32).
Channel layout is anchor-major (channel = anchor * K + class), matching the anchor order.
"""
import math

import gin
import tf_keras as keras
import tensorflow as tf

from detlab.layers import batch_norm
from detlab.layers.activations import activation_fn, apply_activation

PRIOR_PROBABILITY = 0.01


class SharedConvHead(keras.layers.Layer):
  """Runs the same conv tower over each level with level-specific BN, then a predictor.

  `activation`: a tf_keras activation name or callable ('swish' is detlab's fusable swish)."""

  def __init__(self, width: int, repeats: int, outputs_per_anchor: int, num_anchors: int,
               min_level: int, max_level: int, bias_init: float = 0.0, sync_bn: bool = False,
               activation="swish", **kwargs):
    super().__init__(**kwargs)
    self.min_level, self.max_level = min_level, max_level
    self.activation = activation
    self._activation = keras.activations.get(activation_fn(activation))
    init = lambda: keras.initializers.VarianceScaling()  # noqa: E731 (fresh per layer)
    self.convs = [keras.layers.SeparableConv2D(
        width, 3, padding="same", use_bias=True, depthwise_initializer=init(),
        pointwise_initializer=init(), name=f"conv{i}") for i in range(repeats)]
    self.bns = [[batch_norm(f"bn{i}_level{level}", synchronized=sync_bn)
                 for level in range(min_level, max_level + 1)] for i in range(repeats)]
    # float32 even under mixed precision: bf16 logits tie in the top-5000 and bf16 box deltas
    # are off by ~0.5 %; the layer casts its (bf16/fp16) input up and computes in float32.
    self.predictor = keras.layers.SeparableConv2D(
        num_anchors * outputs_per_anchor, 3, padding="same", use_bias=True,
        depthwise_initializer=init(), pointwise_initializer=init(),
        bias_initializer=keras.initializers.Constant(bias_init), dtype="float32",
        name="predict")

  def call(self, features: dict, training=None) -> dict:
    outputs = {}
    for index, level in enumerate(range(self.min_level, self.max_level + 1)):
      x = features[str(level)]
      for conv, bns in zip(self.convs, self.bns):
        x = apply_activation(self._activation, bns[index](conv(x), training=training),
                             training)
      outputs[str(level)] = self.predictor(x)
    return outputs


@gin.register(module="detlab.heads")
def class_head(width: int, repeats: int, num_classes: int, num_anchors: int, min_level: int,
               max_level: int, sync_bn: bool = False, activation="swish") -> SharedConvHead:
  """Class logits {str(level): [B, h, w, A*K]} with the focal-loss prior bias."""
  bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
  return SharedConvHead(width, repeats, num_classes, num_anchors, min_level, max_level,
                        bias_init=bias, sync_bn=sync_bn, activation=activation,
                        name="class_net")


@gin.register(module="detlab.heads")
def box_head(width: int, repeats: int, num_anchors: int, min_level: int, max_level: int,
             sync_bn: bool = False, activation="swish") -> SharedConvHead:
  """Box regression {str(level): [B, h, w, A*4]} as (ty, tx, th, tw) per anchor."""
  return SharedConvHead(width, repeats, 4, num_anchors, min_level, max_level,
                        sync_bn=sync_bn, activation=activation, name="box_net")
