"""Classification heads on a `{str(level): tensor}` backbone: each backbone family's paper top
and its training-only auxiliary classifiers.

A registered backbone's feature extractor (`include_top=False`) stops at its last level; the
head adds exactly what the backbone's own `include_top=True` form adds after that level, with
the same layer names, so a classifier built here has the paper's (and keras apps') parameter
count and imports the same weights:
  * EfficientNet V1/V2: 1x1 `top_conv` (1280 channels, width-scaled) -> BN -> swish -> global
    average pool -> dropout -> FC (uniform fan-out init with scale 1/3, as the reference code).
  * Inception family, Xception: global average pool -> dropout -> FC (Glorot uniform).
`head_init` picks the FC's initialisation (bias zero in all three):
  * "reference": the above, the papers' recipes. Made for 1000 classes: on a 10-class
    EfficientNet it starts the logits at std ~3-5 and the loss at ~4-8 instead of
    ln 10 = 2.3, and a short run spends its first hundreds of steps undoing that.
  * "fan_in": U(+-1/sqrt(fan_in)) (PyTorch's nn.Linear default): logit variance E[x^2]/3
    of the pooled features, so the loss starts near ln K and the backbone gets gradient
    from step 1. The demo recipes' choice (README, classification).
  * "zeros": BiT's / big_vision's fine-tuning head: loss exactly ln K at step 0, but no
    gradient reaches the backbone until the FC has moved (dL/dx = W^T (p - y) = 0), which
    cost the learning gate's small net up to 0.14 top-1 against "fan_in" at 600 steps.
Aux heads (GoogLeNet on 4a and 4d, weight 0.3; Inception v3/v4/ResNet-v2 on the 17x17 grid,
weight 0.4) are the layers of `detlab.layers.aux_head`.
"""
import dataclasses

import tf_keras as keras

from detlab.backbones import efficientnet, efficientnet_v2
from detlab.layers import batch_norm
from detlab.layers.activations import activation_layer
from detlab.layers.aux_head import googlenet_aux_head, inception_aux_head
from detlab.layers.mbconv import conv_init
from detlab.layers.normalization import BN_MOMENTUM


@dataclasses.dataclass(frozen=True)
class AuxSite:
  """One auxiliary classifier: output key, where it taps the backbone, its head and weight.

  `layer` names a backbone layer whose output feeds the head; None means the level-4 output.
  """
  key: str
  layer: str | None
  kind: str  # "googlenet" (no BN) | "inception" (with BN)
  loss_weight: float


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """What a backbone family puts after its last feature level (see the module docstring)."""
  dropout: float  # the paper's / reference code's classifier dropout
  top_filters: int | None = None  # EfficientNet's 1x1 top conv; None: pool straight away
  top_bn_momentum: float = BN_MOMENTUM
  efficientnet_init: bool = False
  aux_sites: tuple = ()
  top_activation: str = "swish"  # after the top conv; 'relu6' for EfficientNet-Lite


_V3_AUX = (AuxSite("aux_logits", None, "inception", 0.4),)


def _v1_spec(variant: str) -> HeadSpec:
  width, _, _, dropout = efficientnet.V1_SCALING[variant]
  return HeadSpec(dropout, efficientnet.round_filters(1280, width), BN_MOMENTUM, True)


def _lite_spec(variant: str) -> HeadSpec:
  # efficientnet_lite_builder fixes the head: 1280 channels at every width.
  return HeadSpec(efficientnet.LITE_SCALING[variant][3], 1280, BN_MOMENTUM, True,
                  top_activation="relu6")


def _v2_spec(variant: str) -> HeadSpec:
  spec = efficientnet_v2.V2_VARIANTS[variant]
  return HeadSpec(spec.dropout, efficientnet_v2.round_filters_v2(1280, spec.width),
                  efficientnet_v2.V2_BN_MOMENTUM, True)


HEAD_SPECS = {
    **{f"efficientnet_{v}": _v1_spec(v) for v in efficientnet.V1_SCALING},
    **{f"efficientnetv2_{v}": _v2_spec(v) for v in efficientnet_v2.V2_VARIANTS},
    **{f"efficientnet_{v}": _lite_spec(v) for v in efficientnet.LITE_SCALING},
    # GoogLeNet: dropout 0.4 before the FC (paper Sec. 5); aux heads on 4a and 4d.
    "inception_v1": HeadSpec(0.4, aux_sites=(
        AuxSite("aux_logits_4a", "inception_4a_output", "googlenet", 0.3),
        AuxSite("aux_logits_4d", "inception_4d_output", "googlenet", 0.3))),
    # TF-slim: dropout_keep_prob 0.8 for BN-Inception, v3, v4 and Inception-ResNet.
    "inception_v2": HeadSpec(0.2),
    "inception_v3": HeadSpec(0.2, aux_sites=_V3_AUX),
    "inception_v4": HeadSpec(0.2, aux_sites=_V3_AUX),
    "inception_resnet_v1": HeadSpec(0.2),
    "inception_resnet_v2": HeadSpec(0.2, aux_sites=_V3_AUX),
    # Xception paper: dropout 0.5 before the logistic regression layer.
    "xception": HeadSpec(0.5),
}


HEAD_INITS = ("reference", "zeros", "fan_in")


def classification_logits(features, spec: HeadSpec, num_classes: int, dropout: float,
                          sync_bn: bool = False, head_init: str = "reference"):
  """The top on the last level's features [B, h, w, C] -> logits [B, num_classes].
  head_init: the FC's initialisation, one of HEAD_INITS (module docstring)."""
  if head_init not in HEAD_INITS:
    raise ValueError(f"classifier.head_init must be one of {HEAD_INITS}, got {head_init!r}.")
  x = features
  if spec.top_filters:
    x = keras.layers.Conv2D(spec.top_filters, 1, padding="same", use_bias=False,
                            kernel_initializer=conv_init(), name="top_conv")(x)
    x = batch_norm("top_bn", momentum=spec.top_bn_momentum, synchronized=sync_bn)(x)
    x = activation_layer(spec.top_activation, name="top_activation")(x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  if isinstance(dropout, keras.layers.Layer):  # e.g. a ScheduledDropout (progressive learning)
    x = dropout(x)
  elif dropout > 0:
    x = keras.layers.Dropout(dropout, name="top_dropout")(x)
  initializer = "glorot_uniform"
  if head_init == "zeros":
    initializer = "zeros"
  elif head_init == "fan_in":  # U(+-1/sqrt(fan_in)): logit variance E[x^2] / 3
    initializer = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in",
                                                     distribution="uniform")
  elif spec.efficientnet_init:
    initializer = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_out",
                                                     distribution="uniform")
  return keras.layers.Dense(num_classes, kernel_initializer=initializer,
                            bias_initializer="zeros", name="predictions")(x)


def aux_logits(backbone: keras.Model, sites, num_classes: int, sync_bn: bool = False) -> dict:
  """{key: logits [B, num_classes]} of the aux heads on `backbone`'s graph (symbolic)."""
  outputs = {}
  for site in sites:
    tap = backbone.output["4"] if site.layer is None else backbone.get_layer(site.layer).output
    prefix = "aux" if site.key == "aux_logits" else "aux_" + site.key.rsplit("_", 1)[-1]
    if site.kind == "googlenet":
      outputs[site.key] = googlenet_aux_head(tap, num_classes, prefix)
    else:
      outputs[site.key] = inception_aux_head(tap, num_classes, prefix, sync_bn)
  return outputs
