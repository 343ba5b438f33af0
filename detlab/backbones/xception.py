"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", 2017).

Entry flow (2 convs, then 3 blocks of two separable convs + 3x3/2 max-pool with a strided 1x1
conv-BN shortcut), middle flow (8 identity-residual blocks of three ReLU -> separable conv ->
BN), exit flow (one more downsampling block, then separable 1536 and 2048). Separable convs
have no activation between depthwise and pointwise and no bias; BN after every conv.

Layers, creation order and names mirror `tf_keras.applications.Xception` (its shortcut convs,
their BNs and the adds are unnamed, hence `conv2d_i`, `batch_normalization_i`, `add_i`) so
counts match and weights import by name. Classifier: global average pool, dropout 0.5 (paper),
FC; no aux head (the paper trains Xception without one).

Levels (include_top=False, 'same' padding): 2 = block2 output (128), 3 = block3 (256),
4 = block12 (728), 5 = block14_sepconv2_act (2048).
"""
import tf_keras as keras

from detlab.backbones.classifier import ClassifierOrExtractor
from detlab.backbones.registration import registered_builder
from detlab.layers.conv_bn import KerasAutoNames, conv_bn_act
from detlab.layers.normalization import batch_norm

NATIVE_SIZE = 299
ENTRY_BLOCKS = ((2, 128), (3, 256), (4, 728))  # (block number, filters)
MIDDLE_BLOCKS = range(5, 13)


def _sep_conv_bn(x, filters: int, prefix: str, sync_bn: bool, activation_before: bool = True,
                 activation_after: bool = False):
  """[ReLU] -> separable 3x3 (depthwise then pointwise, nothing between) -> BN [-> ReLU],
  named `{prefix}_act`, `{prefix}`, `{prefix}_bn` as keras does."""
  if activation_before:
    x = keras.layers.Activation("relu", name=prefix + "_act")(x)
  x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=prefix)(x)
  x = batch_norm(prefix + "_bn", synchronized=sync_bn)(x)
  if activation_after:
    x = keras.layers.Activation("relu", name=prefix + "_act")(x)
  return x


def _downsampling_block(x, block: int, filters: tuple, names: KerasAutoNames, sync_bn: bool,
                        first_activation: bool = True):
  """Strided 1x1 conv-BN shortcut + (two separable convs -> 3x3/2 max-pool)."""
  shortcut = conv_bn_act(x, filters[1], 1, strides=2, padding="same", activation=None,
                         sync_bn=sync_bn, conv_name=names("conv2d"),
                         bn_name=names("batch_normalization"))
  prefix = f"block{block}"
  if not first_activation:  # block2 follows a ReLU already
    x = _sep_conv_bn(x, filters[0], prefix + "_sepconv1", sync_bn, activation_before=False)
    x = keras.layers.Activation("relu", name=prefix + "_sepconv2_act")(x)
    x = _sep_conv_bn(x, filters[1], prefix + "_sepconv2", sync_bn, activation_before=False)
  else:
    x = _sep_conv_bn(x, filters[0], prefix + "_sepconv1", sync_bn)
    x = _sep_conv_bn(x, filters[1], prefix + "_sepconv2", sync_bn)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=prefix + "_pool")(x)
  return keras.layers.Add(name=names("add"))([x, shortcut])


def build_xception(*, input_shape=None, include_top: bool = False, num_classes: int = 1000,
                   dropout: float = 0.5, padding: str | None = None, sync_bn: bool = False,
                   min_level: int = 2, max_level: int = 5,
                   name: str = "xception") -> keras.Model:
  """Xception as a classifier (include_top=True) or a `{str(level): tensor}` extractor.

  Input: float32 [B, S, S, 3] in [-1, 1] (keras' `xception.preprocess_input`).
  padding None: 'valid' for the classifier's two stem convs (paper/keras 299 geometry), 'same'
  for the extractor. input_shape None: (299, 299, 3) / (None, None, 3).
  """
  top = ClassifierOrExtractor(include_top, num_classes, dropout, min_level, max_level, name)
  padding, inputs = top.input(padding, input_shape, NATIVE_SIZE)
  names = KerasAutoNames()
  x = inputs
  for i, (filters, strides) in enumerate(((32, 2), (64, 1)), start=1):
    x = conv_bn_act(x, filters, 3, strides=strides, padding=padding, sync_bn=sync_bn,
                    conv_name=f"block1_conv{i}", bn_name=f"block1_conv{i}_bn",
                    act_name=f"block1_conv{i}_act")

  endpoints = {}
  for block, filters in ENTRY_BLOCKS:
    x = _downsampling_block(x, block, (filters, filters), names, sync_bn,
                            first_activation=block != 2)
    endpoints[str(block)] = x  # block b ends at stride 2^b; level 4 is taken after block12
  for block in MIDDLE_BLOCKS:
    shortcut = x
    for k in (1, 2, 3):
      x = _sep_conv_bn(x, 728, f"block{block}_sepconv{k}", sync_bn)
    x = keras.layers.Add(name=names("add"))([x, shortcut])
  endpoints["4"] = x
  x = _downsampling_block(x, 13, (728, 1024), names, sync_bn)
  x = _sep_conv_bn(x, 1536, "block14_sepconv1", sync_bn, activation_before=False,
                   activation_after=True)
  x = _sep_conv_bn(x, 2048, "block14_sepconv2", sync_bn, activation_before=False,
                   activation_after=True)
  endpoints["5"] = x
  return top.model(x, endpoints)


xception = registered_builder("xception", "Xception (see `build_xception` for arguments).",
                              build_xception)
