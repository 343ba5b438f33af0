"""Backbones. Each entry builds a tf_keras Model returning `{str(level): tensor}`.

The table of contents: one line per registered builder (all are gin-registered too), and
beside it each backbone's input convention (what its published weights expect; see
conventions.py). `input_convention(x)` looks one up for a name, builder or model.
"""
from detlab.backbones import efficientnet, efficientnet_v2
from detlab.backbones import (inception_resnet, inception_v1, inception_v2, inception_v3,
                              inception_v4, xception)
from detlab.backbones.conventions import (EFFICIENTNET_LITE, IMAGENET_MEAN_STD,
                                         MINUS_ONE_TO_ONE, MINUS_ONE_TO_ONE_V2,
                                         InputConvention)

BACKBONES = {
    "efficientnet_b0": efficientnet.efficientnet_b0,
    "efficientnet_b1": efficientnet.efficientnet_b1,
    "efficientnet_b2": efficientnet.efficientnet_b2,
    "efficientnet_b3": efficientnet.efficientnet_b3,
    "efficientnet_b4": efficientnet.efficientnet_b4,
    "efficientnet_b5": efficientnet.efficientnet_b5,
    "efficientnet_b6": efficientnet.efficientnet_b6,
    "efficientnet_b7": efficientnet.efficientnet_b7,
    "efficientnet_lite0": efficientnet.efficientnet_lite0,
    "efficientnet_lite1": efficientnet.efficientnet_lite1,
    "efficientnet_lite2": efficientnet.efficientnet_lite2,
    "efficientnet_lite3": efficientnet.efficientnet_lite3,
    "efficientnet_lite4": efficientnet.efficientnet_lite4,
    "efficientnetv2_b0": efficientnet_v2.efficientnetv2_b0,
    "efficientnetv2_b1": efficientnet_v2.efficientnetv2_b1,
    "efficientnetv2_b2": efficientnet_v2.efficientnetv2_b2,
    "efficientnetv2_b3": efficientnet_v2.efficientnetv2_b3,
    "efficientnetv2_s": efficientnet_v2.efficientnetv2_s,
    "efficientnetv2_m": efficientnet_v2.efficientnetv2_m,
    "efficientnetv2_l": efficientnet_v2.efficientnetv2_l,
    "efficientnetv2_xl": efficientnet_v2.efficientnetv2_xl,
    "inception_v1": inception_v1.inception_v1,
    "inception_v2": inception_v2.inception_v2,
    "inception_v3": inception_v3.inception_v3,
    "inception_v4": inception_v4.inception_v4,
    "inception_resnet_v1": inception_resnet.inception_resnet_v1,
    "inception_resnet_v2": inception_resnet.inception_resnet_v2,
    "xception": xception.xception,
}

# name -> the input its published weights expect (keras apps / google/automl / TF-slim).
INPUT_CONVENTIONS = {
    **{f"efficientnet_b{i}": IMAGENET_MEAN_STD.at_size(efficientnet.native_resolution(f"b{i}"))
       for i in range(8)},
    **{f"efficientnet_lite{i}": EFFICIENTNET_LITE.at_size(
        efficientnet.native_resolution(f"lite{i}")) for i in range(5)},
    **{f"efficientnetv2_b{i}": IMAGENET_MEAN_STD.at_size(
        efficientnet_v2.native_resolution(f"b{i}")) for i in range(4)},
    **{f"efficientnetv2_{v}": MINUS_ONE_TO_ONE_V2.at_size(efficientnet_v2.native_resolution(v))
       for v in ("s", "m", "l", "xl")},
    "inception_v1": MINUS_ONE_TO_ONE.at_size(inception_v1.NATIVE_SIZE),
    "inception_v2": MINUS_ONE_TO_ONE.at_size(inception_v2.NATIVE_SIZE),
    "inception_v3": MINUS_ONE_TO_ONE.at_size(inception_v3.NATIVE_SIZE),
    "inception_v4": MINUS_ONE_TO_ONE.at_size(inception_v4.NATIVE_SIZE),
    "inception_resnet_v1": MINUS_ONE_TO_ONE.at_size(inception_resnet.NATIVE_SIZE),
    "inception_resnet_v2": MINUS_ONE_TO_ONE.at_size(inception_resnet.NATIVE_SIZE),
    "xception": MINUS_ONE_TO_ONE.at_size(xception.NATIVE_SIZE),
}


def _backbone_name(backbone) -> str | None:
  """The BACKBONES key of a name ('efficientnet_b0' or the model name 'efficientnet-b0'), a
  builder (also gin's wrapper of one, or a functools.partial) or a built model."""
  if isinstance(backbone, str):
    return backbone.replace("-", "_")
  fn = getattr(backbone, "func", backbone)  # functools.partial
  fn = getattr(fn, "__wrapped__", fn)  # gin's configurable wrapper
  for name, builder in BACKBONES.items():
    if fn is builder:
      return name
  name = getattr(backbone, "name", None) or getattr(fn, "__name__", None)
  return name.replace("-", "_") if isinstance(name, str) else None


def input_convention(backbone, default: InputConvention | None = None) -> InputConvention:
  """The input convention of `backbone`: a BACKBONES name, a builder, a backbone or classifier
  model, or a detector (then its `.backbone`). An object with an `input_convention` attribute
  (an `InputConvention`) gives its own. Unknown backbones: `default`, or a ValueError."""
  for candidate in (backbone, getattr(backbone, "backbone", None)):
    if candidate is None:
      continue
    own = getattr(candidate, "input_convention", None)
    if isinstance(own, InputConvention):
      return own
    name = _backbone_name(candidate)
    if name in INPUT_CONVENTIONS:
      return INPUT_CONVENTIONS[name]
  if default is not None:
    return default
  raise ValueError(
      f"No input convention known for backbone {_backbone_name(backbone) or backbone!r}. Add "
      "it to detlab.backbones.INPUT_CONVENTIONS, or set `model.input_convention = "
      f"InputConvention(...)` on your backbone. Known: {sorted(INPUT_CONVENTIONS)}.")
