"""EfficientDet = backbone -> BiFPN -> shared class/box heads (Tan, Pang & Le, 2020)."""
import gin
import tensorflow as tf
import tf_keras as keras

from detlab.detection.anchors import AnchorConfig
from detlab.heads.detection import box_head, class_head
from detlab.layers.fake_quant import quantize_model
from detlab.necks.bifpn import BiFPN
from detlab.models.pyramid import bifpn_pyramid


class EfficientDet(keras.Model):
  """Images [B, S, S, 3] (normalized by the backbone's input convention) -> per-level class
  logits and box deltas.

  call() returns (class_outputs, box_outputs), each {str(level): [B, h_l, w_l, A*K | A*4]}.
  """

  def __init__(self, backbone: keras.Model, anchors: AnchorConfig, num_classes: int,
               fpn_width: int, fpn_cells: int, head_repeats: int, fusion: str = "fast",
               sync_bn: bool = False, activation: str = "swish", **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self.anchors = anchors
    self.num_classes = num_classes
    levels = dict(min_level=anchors.min_level, max_level=anchors.max_level)
    self.fpn = BiFPN(fpn_width, fpn_cells, fusion=fusion, sync_bn=sync_bn, name="bifpn",
                     activation=activation, **levels)
    a = anchors.anchors_per_location
    self.class_net = class_head(fpn_width, head_repeats, num_classes, a, sync_bn=sync_bn,
                                activation=activation, **levels)
    self.box_net = box_head(fpn_width, head_repeats, a, sync_bn=sync_bn,
                            activation=activation, **levels)

  def call(self, images, training=None):
    features = self.pyramid(images, training=training)
    return self.class_net(features, training=training), self.box_net(features,
                                                                     training=training)

  def pyramid(self, images, training=None) -> dict:
    """BiFPN features {str(l): [B, ceil(S/2^l), ceil(S/2^l), fpn_width]}, l = min..max level,
    from the backbone's levels >= min_level."""
    return bifpn_pyramid(self.backbone, self.fpn, images, self.anchors.min_level, training)

  # Up to this size an eager forward pass builds faster than a graph trace (measured on 2 CPU
  # cores: D3 at 896² 10 s eager vs 20 s traced); above it the trace wins (D7x at 1536²: 30 s
  # and 1.5 GB traced, 65 s and 2.7 GB eager) because its cost does not grow with the size.
  EAGER_BUILD_MAX_SIZE = 896

  def build_for_size(self) -> "EfficientDet":
    """Creates all variables at the configured image size (keras creates them eagerly, under
    `init_scope`, even during a graph trace)."""
    size = self.anchors.image_size
    if size <= self.EAGER_BUILD_MAX_SIZE:
      self(tf.zeros([1, size, size, 3]), training=False)
    else:
      spec = tf.TensorSpec([1, size, size, 3], tf.float32)
      tf.function(lambda x: self(x, training=False)).get_concrete_function(spec)
    return self

  def flatten_outputs(self, class_outputs: dict, box_outputs: dict):
    """Per-level outputs -> class [B, N, K] and box [B, N, 4] in anchor order."""
    levels = range(self.anchors.min_level, self.anchors.max_level + 1)
    batch = tf.shape(class_outputs[str(self.anchors.min_level)])[0]
    cls = tf.concat([tf.reshape(class_outputs[str(l)], [batch, -1, self.num_classes])
                     for l in levels], axis=1)
    box = tf.concat([tf.reshape(box_outputs[str(l)], [batch, -1, 4]) for l in levels], axis=1)
    return cls, box


@gin.register(module="detlab.models")
def efficientdet(backbone_fn, num_classes: int = 90, image_size: int = 512,
                 fpn_width: int = 64, fpn_cells: int = 3, head_repeats: int = 3,
                 fusion: str = "fast", min_level: int = 3, max_level: int = 7,
                 num_scales: int = 3, aspect_ratios=(1.0, 2.0, 0.5), anchor_scale: float = 4.0,
                 sync_bn: bool | None = None, activation: str = "swish",
                 quantization_aware: bool = False) -> EfficientDet:
  """Builds EfficientDet; defaults are the paper's D0. `backbone_fn` is an uncalled backbone
  builder (e.g. @efficientnet_b0), called here so that variables live in the caller's scope.
  activation: the BiFPN's and heads' ('relu6' in EfficientDet-Lite; the backbone has its own).
  sync_bn: all-reduce BN statistics across replicas; None (default) turns it on when built
  under a strategy with more than one replica in sync (TPU, multi-GPU, multi-worker).
  quantization_aware: every conv computes with fake-quantised input and weights and BN is
  frozen (layers/fake_quant.py; `model.fake_quant` holds the ranges): quantization-aware
  fine-tuning of a trained detector (quantization_aware_training.gin), whose INT8 exports
  use the trained ranges."""
  if sync_bn is None:
    sync_bn = tf.distribute.get_strategy().num_replicas_in_sync > 1
  anchors = AnchorConfig(image_size=image_size, min_level=min_level, max_level=max_level,
                         num_scales=num_scales, aspect_ratios=tuple(aspect_ratios),
                         anchor_scale=anchor_scale)
  backbone = backbone_fn(input_shape=(image_size, image_size, 3), sync_bn=sync_bn)
  model = EfficientDet(backbone, anchors, num_classes, fpn_width, fpn_cells, head_repeats,
                       fusion=fusion, sync_bn=sync_bn, activation=activation,
                       name="efficientdet")
  model.build_for_size()
  if quantization_aware:
    model.fake_quant = quantize_model(model)
  return model
