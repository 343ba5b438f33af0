"""Copy TF-slim checkpoint weights (`tf_slim.nets` / tensorflow/models research/slim) into
detlab classifiers.

A slim checkpoint holds one tensor per variable, e.g.
`InceptionV3/Mixed_5b/Branch_1/Conv2d_0b_5x5/weights` and `.../BatchNorm/moving_mean`
(BN without gamma: slim's `scale=False`), and logits as a 1x1 conv with biases,
`InceptionV3/Logits/Conv2d_1c_1x1/{weights,biases}` [1, 1, C, K] (K = 1001: class 0 is
slim's background). Supported:
- inception_v3: detlab's v3 has keras' layer order; slim's scope names sort in the same order
  (stem `Conv2d_1a` < `Conv2d_2a` < ... < `Mixed_5b` < ... < `Mixed_7c`; within a module
  `Branch_0` < `Branch_1`, within a branch `Conv2d_0a` < `Conv2d_0b` < `Conv2d_1a`), so conv
  units map one to one onto `conv2d_i` / `batch_normalization_i` in index order, every shape
  checked. The aux head (`AuxLogits`) is not imported (detlab's inference graph has none).
- inception_v1 (GoogLeNet): by explicit names into detlab's `inception_v1(variant="slim")`
  (TF-slim's network: BN after every conv, no LRN, 3x3 in the "5x5" branch, 2x2/2 pool
  before 5a; the paper's is detlab's default). Slim names Mixed_5b's third-branch 3x3
  `Conv2d_0a_3x3` (all others `Conv2d_0b_3x3`).
- inception_v2 (BN-Inception): by explicit names (`_v2_names`) into detlab's
  `inception_v2(stem="separable")`: TF-slim's first layer is a separable 7x7 conv with bias
  and no BN, where the paper (and detlab's default) has a 7x7 conv + BN.
Any variable neither mapped nor listed as ignored is an error; so is a shape mismatch.
"""
import re

import numpy as np
import tensorflow as tf
import tf_keras as keras

from detlab.backbones.weight_import import WeightImportError, weighted_layers

SCOPES = {"inception_v3": "InceptionV3", "inception_v2": "InceptionV2",
          "inception_v1": "InceptionV1"}
_V1_MODULES = {"3a": "Mixed_3b", "3b": "Mixed_3c", "4a": "Mixed_4b", "4b": "Mixed_4c",
               "4c": "Mixed_4d", "4d": "Mixed_4e", "4e": "Mixed_4f", "5a": "Mixed_5b",
               "5b": "Mixed_5c"}
_V1_BRANCHES = {"1x1": "Branch_0/Conv2d_0a_1x1", "3x3_reduce": "Branch_1/Conv2d_0a_1x1",
                "3x3": "Branch_1/Conv2d_0b_3x3", "5x5_reduce": "Branch_2/Conv2d_0a_1x1",
                "5x5": "Branch_2/Conv2d_0b_3x3", "pool_proj": "Branch_3/Conv2d_0b_1x1"}
# detlab inception_v2 module -> TF-slim scope (slim counts modules as the paper's Figure 5).
_V2_MODULES = {"3a": "Mixed_3b", "3b": "Mixed_3c", "3c": "Mixed_4a", "4a": "Mixed_4b",
               "4b": "Mixed_4c", "4c": "Mixed_4d", "4d": "Mixed_4e", "4e": "Mixed_5a",
               "5a": "Mixed_5b", "5b": "Mixed_5c"}
# detlab conv suffix -> slim Branch/Conv, for modules with a 1x1 branch and for reductions.
_V2_BRANCHES = {"1x1": "Branch_0/Conv2d_0a_1x1", "3x3_reduce": "Branch_1/Conv2d_0a_1x1",
                "3x3": "Branch_1/Conv2d_0b_3x3", "double3x3_reduce": "Branch_2/Conv2d_0a_1x1",
                "double3x3a": "Branch_2/Conv2d_0b_3x3", "double3x3b": "Branch_2/Conv2d_0c_3x3",
                "pool_proj": "Branch_3/Conv2d_0b_1x1"}
_V2_REDUCTION_BRANCHES = {"3x3_reduce": "Branch_0/Conv2d_0a_1x1",
                          "3x3": "Branch_0/Conv2d_1a_3x3",
                          "double3x3_reduce": "Branch_1/Conv2d_0a_1x1",
                          "double3x3a": "Branch_1/Conv2d_0b_3x3",
                          "double3x3b": "Branch_1/Conv2d_1a_3x3"}
_IGNORED = re.compile(r"(/AuxLogits/|ExponentialMovingAverage|global_step|/Momentum|/RMSProp)")


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """{variable name: value} of a TF1 name-based checkpoint (prefix or directory)."""
  if tf.io.gfile.isdir(path):
    path = tf.train.latest_checkpoint(path) or path
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def conv_units(variables: dict, scope: str) -> dict[str, dict[str, np.ndarray]]:
  """{conv scope: {'weights', 'biases', 'beta', 'gamma', 'moving_mean', 'moving_variance'}}
  under `scope`, aux head and optimizer/EMA slots left out."""
  units: dict = {}
  for name, value in variables.items():
    if not name.startswith(scope + "/") or _IGNORED.search(name):
      continue
    parts = name.split("/")
    if parts[-2] == "BatchNorm":
      unit, kind = "/".join(parts[:-2]), parts[-1]
    else:
      unit, kind = "/".join(parts[:-1]), parts[-1]
    units.setdefault(unit, {})[kind] = value
  return units


def _assign(layer: keras.layers.Layer, values: list, source: str) -> None:
  expected = [tuple(w.shape) for w in layer.weights]
  got = [tuple(v.shape) for v in values]
  if expected != got:
    raise WeightImportError(f"{source} -> {layer.name}: shapes {got} vs detlab {expected}")
  layer.set_weights(values)


def _indexed(layers: dict, stem: str) -> list:
  """Auto-named layers `stem`, `stem_1`, ... in index order."""
  pattern = re.compile(rf"^{stem}(?:_(\d+))?$")
  found = [(int(m.group(1) or 0), layer) for name, layer in layers.items()
           if (m := pattern.match(name))]
  return [layer for _, layer in sorted(found, key=lambda t: t[0])]


def _copy_logits(layers: dict, units: dict, logits_scope: str) -> None:
  unit = units.pop(logits_scope, None)
  if unit is None:
    raise WeightImportError(f"No logits {logits_scope} in the checkpoint.")
  kernel = unit["weights"].reshape(unit["weights"].shape[-2:])  # [1, 1, C, K] -> [C, K]
  _assign(layers["predictions"], [kernel, unit["biases"]], logits_scope)


def _import_inception_v3(model: keras.Model, variables: dict) -> list[str]:
  scope = SCOPES["inception_v3"]
  units = conv_units(variables, scope)
  layers = weighted_layers(model)
  _copy_logits(layers, units, f"{scope}/Logits/Conv2d_1c_1x1")
  convs, bns = _indexed(layers, "conv2d"), _indexed(layers, "batch_normalization")
  names = sorted(units)
  if not len(names) == len(convs) == len(bns):
    raise WeightImportError(f"{len(names)} slim conv units vs {len(convs)} detlab convs / "
                            f"{len(bns)} BNs; first slim units: {names[:5]}")
  for name, conv, bn in zip(names, convs, bns):
    unit = units[name]
    _assign(conv, [unit["weights"]], name)
    _assign(bn, [unit["beta"], unit["moving_mean"], unit["moving_variance"]], name)
  return names


def _v2_names() -> dict[str, str]:
  """{detlab conv-BN prefix: slim conv scope} of BN-Inception (stem and the 10 modules)."""
  names = {"conv2_3x3_reduce": "Conv2d_2b_1x1", "conv2_3x3": "Conv2d_2c_3x3"}
  for module, slim_module in _V2_MODULES.items():
    reduction = module in ("3c", "4e")
    for suffix, branch in (_V2_REDUCTION_BRANCHES if reduction else _V2_BRANCHES).items():
      names[f"inception_{module}_{suffix}"] = f"{slim_module}/{branch}"
  return names


def _v1_names() -> dict[str, str]:
  """{detlab conv name: slim conv scope} of TF-slim's GoogLeNet."""
  names = {"conv1_7x7": "Conv2d_1a_7x7", "conv2_3x3_reduce": "Conv2d_2b_1x1",
           "conv2_3x3": "Conv2d_2c_3x3"}
  for module, slim_module in _V1_MODULES.items():
    for suffix, branch in _V1_BRANCHES.items():
      names[f"inception_{module}_{suffix}"] = f"{slim_module}/{branch}"
  names["inception_5a_5x5"] = "Mixed_5b/Branch_2/Conv2d_0a_3x3"  # slim's name there
  return names


def _copy_named_units(layers: dict, units: dict, scope: str, names: dict, conv_suffix: str,
                      bn_suffix: str) -> list[str]:
  """conv + gamma-free BN per {detlab prefix: slim scope}; all units must be used."""
  copied = []
  for prefix, slim_name in names.items():
    name = f"{scope}/{slim_name}"
    unit = units.pop(name, None)
    if unit is None:
      raise WeightImportError(f"{name} (for detlab {prefix}) is not in the checkpoint.")
    if prefix + conv_suffix not in layers or prefix + bn_suffix not in layers:
      raise WeightImportError(f"detlab model has no {prefix}{conv_suffix} + {prefix}"
                              f"{bn_suffix}; build the TF-slim variant (see slim_import).")
    _assign(layers[prefix + conv_suffix], [unit["weights"]], name)
    _assign(layers[prefix + bn_suffix], [unit["beta"], unit["moving_mean"],
                                         unit["moving_variance"]], name)
    copied.append(name)
  if units:
    raise WeightImportError(f"Unmapped TF-slim variables: {sorted(units)[:10]}")
  return copied


def _import_inception_v1(model: keras.Model, variables: dict) -> list[str]:
  scope = SCOPES["inception_v1"]
  units = conv_units(variables, scope)
  layers = weighted_layers(model)
  _copy_logits(layers, units, f"{scope}/Logits/Conv2d_0c_1x1")
  return _copy_named_units(layers, units, scope, _v1_names(), "", "_bn")


def _import_inception_v2(model: keras.Model, variables: dict) -> list[str]:
  scope = SCOPES["inception_v2"]
  units = conv_units(variables, scope)
  layers = weighted_layers(model)
  _copy_logits(layers, units, f"{scope}/Logits/Conv2d_1c_1x1")
  stem = units.pop(f"{scope}/Conv2d_1a_7x7")
  if "conv1_7x7_sep" not in layers:
    raise WeightImportError("TF-slim's inception_v2 starts with a separable 7x7 conv: build "
                            "the detlab model with inception_v2(stem='separable').")
  _assign(layers["conv1_7x7_sep"], [stem["depthwise_weights"], stem["pointwise_weights"],
                                    stem["biases"]], f"{scope}/Conv2d_1a_7x7")
  return [f"{scope}/Conv2d_1a_7x7"] + _copy_named_units(layers, units, scope, _v2_names(),
                                                         "_conv", "_bn")


# Builder arguments that make detlab's network TF-slim's (detectors need them too, via gin).
SLIM_BUILDER_KWARGS = {"inception_v1": {"variant": "slim"}, "inception_v2": {"stem": "separable"},
                       "inception_v3": {}}

_IMPORTERS = {"inception_v3": _import_inception_v3, "inception_v2": _import_inception_v2,
              "inception_v1": _import_inception_v1}


def import_slim_checkpoint(model: keras.Model, checkpoint: str, backbone: str) -> list[str]:
  """Copies the slim checkpoint's weights into detlab classifier `model` (include_top=True,
  num_classes = the checkpoint's, aux heads off). Returns the slim scopes copied."""
  if backbone not in _IMPORTERS:
    raise ValueError(f"No TF-slim mapping for {backbone!r}; supported: {sorted(_IMPORTERS)}.")
  variables = read_checkpoint(checkpoint)
  if not any(n.startswith(SCOPES[backbone] + "/") for n in variables):
    scopes = sorted({n.split("/")[0] for n in variables})
    raise WeightImportError(f"{checkpoint} holds no {SCOPES[backbone]}/ variables (its "
                            f"scopes: {scopes[:10]}); is it a {backbone} checkpoint?")
  return _IMPORTERS[backbone](getattr(model, "inference_model", model), variables)


def slim_num_classes(checkpoint: str, backbone: str) -> int:
  """K of the checkpoint's logits conv (1001 for the published ImageNet checkpoints)."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint)
                                    if tf.io.gfile.isdir(checkpoint) else checkpoint)
  shapes = reader.get_variable_to_shape_map()
  logits = [s for n, s in shapes.items()
            if n.startswith(SCOPES[backbone] + "/Logits/") and n.endswith("/weights")]
  if not logits:
    raise WeightImportError(f"{checkpoint}: no {SCOPES[backbone]}/Logits/*/weights.")
  return int(logits[0][-1])
