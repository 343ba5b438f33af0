"""GoogLeNet / Inception v1 (Szegedy et al., "Going deeper with convolutions", 2014).

Inception modules concatenate four branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1
projection. Convs have biases and ReLU, no BN (the 2014 network); LRN after the first pool and
after conv2, as in the paper. The paper's 224 geometry (112/56/28/14/7) is 'same' padding
throughout, so the classifier and the feature extractor share one geometry.

Classifier: global average pool (7x7 at 224), dropout 0.4, FC. Two aux classifiers on 4a and
4d (loss weight 0.3, training only; see `detlab.backbones.classifier`).
Levels (include_top=False): 2 = conv2 (192), 3 = 3b (480), 4 = 4e (832), 5 = 5b (1024).

`variant="slim"` builds TF-slim's `inception_v1` (the network of the published GoogLeNet
checkpoint), which departs from the paper in four ways: BN (no gamma, no conv bias) after
every conv, no LRN, 3x3 instead of 5x5 convs in the third branch, and a 2x2/2 instead of
3x3/2 max-pool before 5a; no aux heads. Needed to import that checkpoint
(detlab.backbones.slim_import); the paper's network stays the default.
"""
import tf_keras as keras

from detlab.backbones.classifier import ClassifierOrExtractor
from detlab.backbones.registration import registered_builder
from detlab.layers.aux_head import googlenet_aux_head
from detlab.layers.conv_bn import conv_bn_act
from detlab.layers.local_response_norm import LocalResponseNormalization

# Paper Table 1: module -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))
AUX_SITES = ("4a", "4d")
AUX_LOSS_WEIGHT = 0.3
NATIVE_SIZE = 224


def _conv(x, filters: int, kernel_size, name: str, strides: int = 1, use_bn: bool = False,
          sync_bn: bool = False):
  """conv (+bias) -> ReLU (the paper), or conv -> BN without gamma -> ReLU (TF-slim)."""
  return conv_bn_act(x, filters, kernel_size, strides=strides, use_bn=use_bn, bn_scale=False,
                     sync_bn=sync_bn, conv_name=name, bn_name=name + "_bn",
                     act_name=name + "_relu")


def inception_module(x, name: str, slim: bool = False, sync_bn: bool = False):
  """One GoogLeNet module: [B, H, W, C] -> [B, H, W, #1x1 + #3x3 + #5x5 + pool proj]."""
  n1, n3r, n3, n5r, n5, npool = MODULES[name]
  p = f"inception_{name}"
  conv = lambda t, f, k, n: _conv(t, f, k, n, use_bn=slim, sync_bn=sync_bn)  # noqa: E731
  branch1 = conv(x, n1, 1, f"{p}_1x1")
  branch3 = conv(conv(x, n3r, 1, f"{p}_3x3_reduce"), n3, 3, f"{p}_3x3")
  branch5 = conv(conv(x, n5r, 1, f"{p}_5x5_reduce"), n5, 3 if slim else 5, f"{p}_5x5")
  pool = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{p}_pool")(x)
  branch_pool = conv(pool, npool, 1, f"{p}_pool_proj")
  return keras.layers.Concatenate(name=f"{p}_output")([branch1, branch3, branch5, branch_pool])


def build_inception_v1(*, input_shape=None, include_top: bool = False, num_classes: int = 1000,
                       aux_logits: bool = True, dropout: float = 0.4, use_lrn: bool = True,
                       sync_bn: bool = False, min_level: int = 2, max_level: int = 5,
                       name: str = "inception_v1", variant: str = "paper") -> keras.Model:
  """GoogLeNet as a classifier (include_top=True) or a `{str(level): tensor}` extractor.

  Input: float32 [B, S, S, 3] in [-1, 1]. input_shape None: (224, 224, 3) for the classifier,
  (None, None, 3) for the extractor. aux_logits: build the two training-only aux heads.
  sync_bn: for the slim variant's BN (the paper's GoogLeNet has none).
  variant: "paper" or "slim" (TF-slim's network, see the module docstring).
  """
  if variant not in ("paper", "slim"):
    raise ValueError(f"variant must be 'paper' or 'slim', got {variant!r}.")
  slim = variant == "slim"
  use_lrn = use_lrn and not slim
  aux_logits = aux_logits and not slim
  top = ClassifierOrExtractor(include_top, num_classes, dropout, min_level, max_level, name)
  _, inputs = top.input("same", input_shape, NATIVE_SIZE)
  x = _conv(inputs, 64, 7, "conv1_7x7", strides=2, use_bn=slim, sync_bn=sync_bn)
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
  if use_lrn:
    x = LocalResponseNormalization(name="pool1_norm")(x)
  x = _conv(x, 64, 1, "conv2_3x3_reduce", use_bn=slim, sync_bn=sync_bn)
  x = _conv(x, 192, 3, "conv2_3x3", use_bn=slim, sync_bn=sync_bn)
  if use_lrn:
    x = LocalResponseNormalization(name="conv2_norm")(x)
  endpoints = {"2": x}
  for level, modules in enumerate(STAGES, start=3):
    pool_size = 2 if slim and level == 5 else 3  # TF-slim's MaxPool_5a_2x2
    x = keras.layers.MaxPooling2D(pool_size, strides=2, padding="same",
                                  name=f"pool{level - 1}")(x)
    for module in modules:
      x = inception_module(x, module, slim, sync_bn)
      top.aux_head(aux_logits and module in AUX_SITES, f"aux_logits_{module}", AUX_LOSS_WEIGHT,
                   googlenet_aux_head, x, num_classes, f"aux_{module}")
    endpoints[str(level)] = x
  return top.model(x, endpoints)


inception_v1 = registered_builder("inception_v1",
                                  "GoogLeNet (see `build_inception_v1` for arguments).",
                                  build_inception_v1)
