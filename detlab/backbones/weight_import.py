"""Copy weights from `tf_keras.applications` models into detlab models, by layer name.

Generic: any detlab model whose weighted layers carry the keras app's layer names (EfficientNet,
EfficientNetV2, and families written to keras names such as Inception v3 / Xception) can take
the keras weights. The copy is all-or-nothing: every weighted layer must match by name, weight
count, weight kind (kernel/gamma/...) and shape, or a `WeightImportError` lists what differs.

Input convention: keras apps put their input preprocessing inside the model (`Rescaling`,
`Normalization`, ...); detlab models do not: detlab's pipelines apply the backbone's
`detlab.backbones.input_convention` (what the published keras weights expect; tested end to end
from raw uint8 in tests/backbones/test_weight_import.py). `keras_preprocessing(keras_model)`
returns keras' in-model part as a model:
  - EfficientNet V1: x / 255 then keras' `Normalization` (identity with weights=None; with the
    ImageNet file: ImageNet mean/std, plus keras' extra 1/sqrt(std) fix-up).
  - EfficientNetV2 B0-B3: (x / 255 - ImageNet mean) / ImageNet std.
  - EfficientNetV2 S/M/L: x / 128 - 1 (keras uses 1/128, not 1/127.5).
  - Inception v3 / InceptionResNetV2 / Xception: no preprocessing layers (inputs in [-1, 1]).
"""
import collections
import contextlib
import os
import re
from typing import Callable, Iterator

import tensorflow as tf
import tf_keras as keras
from tf_keras.src import backend as keras_backend

# keras layer types that hold weights but have no detlab counterpart (input preprocessing).
DEFAULT_IGNORED_TYPES = ("Normalization",)
# Layers that may form the in-model input preprocessing of a keras app.
_PREPROCESSING_TYPES = ("Rescaling", "Normalization", "TFOpLambda")

# detlab model name -> keras app constructor, to rebuild the keras model for a weights file.
# Other families add their entries here (or pass `keras_app=` to `import_keras_weights`).
KERAS_APPS: dict[str, Callable[..., keras.Model]] = {
    **{f"efficientnet-b{i}": getattr(keras.applications, f"EfficientNetB{i}") for i in range(8)},
    **{f"efficientnetv2-b{i}": getattr(keras.applications, f"EfficientNetV2B{i}")
       for i in range(4)},
    "efficientnetv2-s": keras.applications.EfficientNetV2S,
    "efficientnetv2-m": keras.applications.EfficientNetV2M,
    "efficientnetv2-l": keras.applications.EfficientNetV2L,
    # keras' own model names, for families that name their detlab model the same way.
    "inception_v3": keras.applications.InceptionV3,
    "inception_resnet_v2": keras.applications.InceptionResNetV2,
    "xception": keras.applications.Xception,
}


class WeightImportError(ValueError):
  """The keras and detlab models do not match layer by layer."""


def _weight_kind(variable) -> str:
  """'kernel', 'gamma', 'moving_mean', ... from a variable name like 'stem_bn/gamma:0'."""
  return variable.name.split("/")[-1].split(":")[0]


def weighted_layers(model: keras.Model,
                    ignored_types: tuple[str, ...] = ()) -> dict[str, keras.layers.Layer]:
  """{name: layer} of every layer with weights, descending into nested models."""
  found: dict[str, keras.layers.Layer] = {}
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      nested = weighted_layers(layer, ignored_types)
      clashes = sorted(set(nested) & set(found))
      if clashes:
        raise WeightImportError(f"{model.name}: layer names occur twice: {clashes[:10]}")
      found.update(nested)
    elif layer.weights and type(layer).__name__ not in ignored_types:
      if layer.name in found:
        raise WeightImportError(f"{model.name}: layer name {layer.name!r} occurs twice.")
      found[layer.name] = layer
  return found


def _describe(layer) -> str:
  return ", ".join(f"{_weight_kind(w)}{tuple(w.shape)}" for w in layer.weights)


def _list(title: str, items: list[str], limit: int = 25) -> str:
  more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
  return f"  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def _match_report(detlab_layers: dict, keras_layers: dict) -> str:
  """Empty when the two sets of layers match; else a readable list of the differences."""
  only_keras = sorted(set(keras_layers) - set(detlab_layers))
  only_detlab = sorted(set(detlab_layers) - set(keras_layers))
  differing = []
  for name in sorted(set(keras_layers) & set(detlab_layers)):
    k, d = keras_layers[name], detlab_layers[name]
    k_sig = [(_weight_kind(w), tuple(w.shape)) for w in k.weights]
    d_sig = [(_weight_kind(w), tuple(w.shape)) for w in d.weights]
    if k_sig != d_sig:
      differing.append(f"{name}: keras [{_describe(k)}] vs detlab [{_describe(d)}]")
  parts = []
  if only_keras:
    parts.append(_list("in keras, missing in detlab", only_keras))
  if only_detlab:
    parts.append(_list("in detlab, missing in keras", only_detlab))
  if differing:
    parts.append(_list("weights differ (kind or shape)", differing))
  if any(re.search(r"_\d+$", name) for name in only_keras + only_detlab):
    parts.append("  Hint: names like `conv2d_7` are keras auto-names, numbered per session; "
                 "build the keras model right after `tf_keras.backend.clear_session()` (or "
                 "pass its .h5 file path, which rebuilds it with fresh names).")
  return "\n".join(parts)


@contextlib.contextmanager
def fresh_keras_names() -> Iterator[None]:
  """Auto-named keras layers (`conv2d`, `conv2d_1`, ...) get the names of a fresh session.

  keras numbers unnamed layers per session, so Inception v3 / Xception built after other models
  would get `conv2d_94` where detlab has `conv2d`. This swaps in an empty name counter while the
  keras app is built and restores the caller's afterwards (their session is left as it was).
  """
  uids = getattr(keras_backend, "PER_GRAPH_OBJECT_NAME_UIDS", None)
  if uids is None:  # private tf_keras detail moved: fall back to the session's names
    yield
    return
  graph = tf.compat.v1.get_default_graph()
  saved = uids.get(graph)
  uids[graph] = collections.defaultdict(int)
  try:
    yield
  finally:
    if saved is None:
      uids.pop(graph, None)
    else:
      uids[graph] = saved


def build_keras_app(detlab_model: keras.Model, weights_path: str,
                    keras_app: Callable[..., keras.Model] | None = None) -> keras.Model:
  """Builds the keras app matching `detlab_model` (weights=None) and loads `weights_path`."""
  if keras_app is None:
    if detlab_model.name not in KERAS_APPS:
      raise WeightImportError(
          f"No keras app known for detlab model {detlab_model.name!r}; pass keras_app= (e.g. "
          f"tf_keras.applications.InceptionV3) or add it to KERAS_APPS. Known: "
          f"{sorted(KERAS_APPS)}.")
    keras_app = KERAS_APPS[detlab_model.name]
  num_classes = int(detlab_model.output_shape[-1])
  with fresh_keras_names():
    model = keras_app(include_top=True, weights=None, classes=num_classes,
                      classifier_activation=None)
  model.load_weights(weights_path)
  return model


def import_keras_weights(detlab_model: keras.Model, keras_model_or_h5_path: keras.Model | str,
                         *, keras_app: Callable[..., keras.Model] | None = None,
                         ignored_types: tuple[str, ...] = DEFAULT_IGNORED_TYPES) -> list[str]:
  """Copies a keras app's weights into `detlab_model`, matching layers by name.

  Args:
    detlab_model: the detlab model (for EfficientNet: the classifier, include_top=True).
    keras_model_or_h5_path: a `tf_keras.applications` model, or the path of its .h5 weights
      (then the keras app is built with weights=None -- from `keras_app`, or from `KERAS_APPS`
      by the detlab model's name -- and the file loaded into it).
    ignored_types: keras layer class names skipped (default: the input `Normalization`).
  Returns:
    The names of the layers copied (sorted).
  Raises:
    WeightImportError: listing the layers missing on either side and those whose weights differ
      in kind or shape; nothing is copied then.
  """
  keras_model = keras_model_or_h5_path
  if isinstance(keras_model, (str, os.PathLike)):
    if not os.path.exists(keras_model):
      raise FileNotFoundError(f"Keras weights file not found: {keras_model}")
    keras_model = build_keras_app(detlab_model, os.fspath(keras_model), keras_app)
  keras_layers = weighted_layers(keras_model, ignored_types)
  detlab_layers = weighted_layers(detlab_model)
  report = _match_report(detlab_layers, keras_layers)
  if report:
    raise WeightImportError(
        f"Cannot import weights of keras model {keras_model.name!r} into detlab model "
        f"{detlab_model.name!r}: layers do not match by name/shape.\n{report}")
  for name, layer in detlab_layers.items():
    layer.set_weights(keras_layers[name].get_weights())
  return sorted(detlab_layers)


def keras_preprocessing(keras_model: keras.Model) -> keras.Model:
  """The keras app's in-model input preprocessing, as a model: raw input -> detlab's input.

  The leading run of Rescaling / Normalization / TF-op layers right after the input; identity
  when the app has none (Inception, Xception).
  """
  x = keras_model.inputs[0]
  for layer in keras_model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    if type(layer).__name__ not in _PREPROCESSING_TYPES:
      break
    x = layer.output
  return keras.Model(keras_model.inputs[0], x, name=f"{keras_model.name}_preprocessing")

