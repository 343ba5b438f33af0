"""Conv-BN folding: an inference BatchNorm is a per-channel affine map, so it merges into the
conv before it.

With s = gamma / sqrt(moving_variance + epsilon): W' = W * s per output channel and
b' = beta + (b - moving_mean) * s. A DepthwiseConv2D kernel [kh, kw, in, mult] scales by s
reshaped to [in, mult]; a SeparableConv2D folds into its pointwise kernel (the depthwise part
is unchanged); a Conv2DTranspose kernel [kh, kw, out, in] scales along its third axis. The
folded conv always has a bias; the BN becomes an Identity.

`fold_batch_norms(model)` returns a new model computing the same inference function without
BN layers; the input model is left as it was. It handles a functional tf_keras model (cloned
with the folded layers) and detlab's EfficientDet (functional backbone, subclassed BiFPN and
heads), and the InstanceSegmenter (that EfficientDet plus its mask head's tower and
transposed conv). Folded models are for inference only: the BN statistics are baked into the kernels.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from detlab.heads.detection import SharedConvHead
from detlab.heads.mask import MaskHead
from detlab.layers.functional import deep_graph_recursion
from detlab.models.efficientdet import EfficientDet
from detlab.models.instance_segmentation import InstanceSegmenter
from detlab.necks.bifpn import FusionNode, ResampleToLevel

FOLDABLE_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                  keras.layers.SeparableConv2D)


def batch_norm_affine(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
  """(s, t) of the inference map x -> x * s + t, per channel, in float64."""
  variance = bn.moving_variance.numpy().astype(np.float64)
  scale = 1.0 / np.sqrt(variance + bn.epsilon)
  if bn.scale:
    scale = scale * bn.gamma.numpy()
  offset = -bn.moving_mean.numpy() * scale
  if bn.center:
    offset = offset + bn.beta.numpy()
  return scale, offset


def can_fold(conv: keras.layers.Layer, bn: keras.layers.Layer) -> bool:
  """A linear channels-last conv followed by a BN over the last axis."""
  if isinstance(conv, keras.layers.Conv2DTranspose):  # a Conv2D whose kernel is [.., out, in]
    return False
  return (isinstance(conv, FOLDABLE_CONVS) and isinstance(bn, keras.layers.BatchNormalization)
          and conv.data_format == "channels_last" and conv.activation is keras.activations.linear
          and len(bn.axis) == 1 and bn.axis[0] in (-1, 3) and not bn.renorm
          and bn.virtual_batch_size is None and bn.adjustment is None)


def folded_weights(conv: keras.layers.Layer, bn: keras.layers.BatchNormalization) -> list:
  """Weights of `conv` with a bias (in the layer's weight order) that equal bn(conv(x))."""
  scale, offset = batch_norm_affine(bn)
  out_channels = scale.shape[0]
  bias = conv.bias.numpy() if conv.use_bias else np.zeros(out_channels)
  new_bias = offset + bias * scale
  if isinstance(conv, keras.layers.SeparableConv2D):
    pointwise = conv.pointwise_kernel.numpy() * scale  # [1, 1, in * mult, out]
    weights = [conv.depthwise_kernel.numpy(), pointwise, new_bias]
  elif isinstance(conv, keras.layers.DepthwiseConv2D):
    kernel = conv.depthwise_kernel.numpy()  # [kh, kw, in, mult]; output channel = i * mult + m
    weights = [kernel * scale.reshape(kernel.shape[2:]), new_bias]
  else:
    weights = [conv.kernel.numpy() * scale, new_bias]  # [kh, kw, in, out]
  dtype = conv.weights[0].dtype.as_numpy_dtype
  return [w.astype(dtype) for w in weights]


def _input_channels(conv: keras.layers.Layer) -> int:
  kernel = conv.depthwise_kernel if hasattr(conv, "depthwise_kernel") else conv.kernel
  return int(kernel.shape[2])


def folded_conv(conv: keras.layers.Layer, bn: keras.layers.BatchNormalization,
                name: str | None = None) -> keras.layers.Layer:
  """A new, built conv layer (with bias) equal to bn(conv(x)) at inference."""
  config = dict(conv.get_config(), use_bias=True)
  if name:
    config["name"] = name
  layer = conv.__class__.from_config(config)
  layer.build(tf.TensorShape([None, None, None, _input_channels(conv)]))
  layer.set_weights(folded_weights(conv, bn))
  if name:  # a copy under another name keeps the original's fake-quant ranges (fake_quant.py)
    layer.quantization_source = conv.name
  return layer


def _conv_feeding(bn: keras.layers.Layer, model: keras.Model):
  """The conv whose output only `bn` reads, in the functional `model`, else None."""
  if len(bn.inbound_nodes) != 1:
    return None
  parents = bn.inbound_nodes[0].inbound_layers
  conv = parents if isinstance(parents, keras.layers.Layer) else None
  if conv is None or not can_fold(conv, bn):
    return None
  if len(conv.inbound_nodes) != 1 or len(conv.outbound_nodes) != 1:
    return None  # shared conv or a second reader of the conv output: folding would change it
  if any(t is conv.output for t in tf.nest.flatten(model.outputs)):
    return None
  return conv


def fold_functional(model: keras.Model) -> keras.Model:
  """A clone of a functional model with every foldable conv -> BN pair folded."""
  pairs = {}
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      conv = _conv_feeding(layer, model)
      if conv is not None:
        pairs[conv.name] = layer
  folded_bns = {bn.name for bn in pairs.values()}
  by_name = {layer.name: layer for layer in model.layers}

  def clone(layer):
    if layer.name in pairs:
      return folded_conv(layer, pairs[layer.name])
    if layer.name in folded_bns:
      return keras.layers.Identity(name=layer.name)
    return layer.__class__.from_config(layer.get_config())

  with deep_graph_recursion():  # clone_model maps the graph recursively, as keras.Model does
    clone_ = keras.models.clone_model(model, clone_function=clone)
  for layer in clone_.layers:
    if layer.name not in pairs and layer.name not in folded_bns and layer.weights:
      layer.set_weights(by_name[layer.name].get_weights())
  for attribute in ("min_level", "max_level"):  # the backbone contract's extras
    if hasattr(model, attribute):
      setattr(clone_, attribute, getattr(model, attribute))
  return clone_


def copy_variables(new: keras.layers.Layer, old: keras.layers.Layer) -> None:
  """old's variables into new, a fresh layer of the same structure. Not by get_weights: a
  container lists its layers' trainable weights before the non-trainable ones, so a frozen
  BN (quantization-aware training freezes them) reorders them, and gamma/beta of one BN could
  land in another's same-shaped slots. tf.Module's walk goes by attribute names instead."""
  sources = tf.Module.variables.fget(old)
  targets = tf.Module.variables.fget(new)
  if [v.shape for v in sources] != [v.shape for v in targets]:
    raise ValueError(f"Cannot copy the variables of {old.name}: {len(sources)} variables vs "
                     f"{len(targets)} in the copy, or shapes differ.")
  for target, source in zip(targets, sources):
    target.assign(source)


def _fold_bifpn_layer(layer: keras.layers.Layer) -> None:
  """ResampleToLevel / FusionNode compute bn(conv(x)): fold in place (on a fresh copy)."""
  if layer.conv is not None and can_fold(layer.conv, layer.bn):
    layer.conv = folded_conv(layer.conv, layer.bn)
    layer.bn = keras.layers.Identity(name=layer.bn.name)


def _fold_head(head: SharedConvHead) -> None:
  """The tower conv is shared across levels but each level has its own BN, so the folded
  weights differ per level: each level's BN slot gets that level's folded conv and the shared
  conv slot becomes an Identity (the call computes bns[level](convs[i](x))). Lists are
  replaced whole: tracked lists must only be appended to, or SavedModel refuses them."""
  levels = range(head.min_level, head.max_level + 1)
  head.bns = [[folded_conv(conv, bn, name=f"{conv.name}_level{level}_folded")
               for bn, level in zip(bns, levels)]
              for conv, bns in zip(head.convs, head.bns)]
  head.convs = [keras.layers.Identity(name=conv.name) for conv in head.convs]


def fold_efficientdet(model: EfficientDet) -> EfficientDet:
  """A new EfficientDet with the same weights and every conv -> BN pair folded."""
  fpn = model.fpn
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(model.dtype_policy)  # build as the original was
  try:
    folded = EfficientDet(fold_functional(model.backbone), model.anchors, model.num_classes,
                          fpn.width, fpn.num_cells, len(model.class_net.convs),
                          fusion=fpn.fusion, activation=fpn.activation, name=model.name)
    folded.build_for_size()
  finally:
    keras.mixed_precision.set_global_policy(previous)
  for new, old in ((folded.fpn, fpn), (folded.class_net, model.class_net),
                   (folded.box_net, model.box_net)):
    copy_variables(new, old)
  for layer in folded.fpn.submodules:
    if isinstance(layer, (ResampleToLevel, FusionNode)):
      _fold_bifpn_layer(layer)
  _fold_head(folded.class_net)
  _fold_head(folded.box_net)
  own = getattr(model.backbone, "input_convention", None)  # a backbone's own convention
  if own is not None:
    folded.backbone.input_convention = own
  return folded


def folded_transposed_conv(conv: keras.layers.Conv2DTranspose,
                           bn: keras.layers.BatchNormalization) -> keras.layers.Layer:
  """A new, built Conv2DTranspose (with bias) equal to bn(conv(x)) at inference: its
  kernel [kh, kw, out, in] scales per output channel along the third axis."""
  scale, offset = batch_norm_affine(bn)
  kernel = conv.kernel.numpy()
  bias = conv.bias.numpy() if conv.use_bias else np.zeros(scale.shape[0])
  layer = conv.__class__.from_config(dict(conv.get_config(), use_bias=True))
  layer.build(tf.TensorShape([None, None, None, int(kernel.shape[3])]))
  dtype = conv.kernel.dtype.as_numpy_dtype
  layer.set_weights([(kernel * scale[None, None, :, None]).astype(dtype),
                     (offset + bias * scale).astype(dtype)])
  return layer


def fold_instance_segmenter(model: InstanceSegmenter) -> InstanceSegmenter:
  """A new InstanceSegmenter: fold_efficientdet's detector plus a copy of the mask head with
  each tower conv -> BN pair and the transposed conv -> BN (if any) folded (lists replaced
  whole)."""
  head = model.mask_head
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(model.dtype_policy)
  try:
    copy = MaskHead(head.num_classes, head.width, head.repeats, head.mask_size,
                    class_agnostic=head.class_agnostic, upsample=head.upsample_mode,
                    name=head.name)
    folded = InstanceSegmenter(fold_efficientdet(model), copy, name=model.name)
    folded.build_for_size()
  finally:
    keras.mixed_precision.set_global_policy(previous)
  copy_variables(copy, head)
  copy.convs = [folded_conv(conv, bn) for conv, bn in zip(copy.convs, copy.bns)]
  copy.bns = [keras.layers.Identity(name=bn.name) for bn in copy.bns]
  if head.upsample_mode == "transposed":
    copy.upsample = folded_transposed_conv(copy.upsample, copy.upsample_bn)
    copy.upsample_bn = keras.layers.Identity(name=copy.upsample_bn.name)
  return folded


def fold_batch_norms(model: keras.Model) -> keras.Model:
  """A BN-free copy of an EfficientDet (an InstanceSegmenter too) or a functional tf_keras
  model (inference only)."""
  if isinstance(model, InstanceSegmenter):
    return fold_instance_segmenter(model)
  if isinstance(model, EfficientDet):
    return fold_efficientdet(model)
  if getattr(model, "_is_graph_network", False):
    return fold_functional(model)
  raise TypeError(f"fold_batch_norms takes an EfficientDet or a functional tf_keras model, "
                  f"got {type(model).__name__}.")


def count_batch_norms(model: keras.Model) -> int:
  """BatchNormalization layers reachable from `model` (0 after folding)."""
  return sum(isinstance(m, keras.layers.BatchNormalization) for m in model.submodules)
