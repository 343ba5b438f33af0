"""Fine-tuning: initialise a fresh model from a backbone-only or a full-detector checkpoint.

  train.init_checkpoint = '/path/to/ckpt-N' (or a directory: its latest checkpoint)
  train.init_mode = 'backbone' | 'detector'

Variables are matched through the checkpoint's object graph (the attribute path, as
`tf.train.Checkpoint` restores), then by shape:
- 'detector': every variable outside the heads must load; head variables whose shape differs
  (another num_classes, another anchor count) keep their fresh initialisation.
- 'backbone': every backbone variable must load; the rest is new. The checkpoint may hold a
  detector (`model/backbone/...`), a backbone saved as `tf.train.Checkpoint(model=backbone)`,
  or a backbone saved with `backbone.save_weights(prefix)`.
A detlab training checkpoint with EMA shadows (a classifier's model_dir, say) gives the
averaged weights and BN statistics where it has them (see `_prefer_ema`).
A google/automl EfficientDet checkpoint (efficientdet-dN, name-based) works too: its EMA
weights load through detlab/weights/ (the reference fine-tunes from them), by the same rules.
A table of loaded / skipped / new variables per part is logged and printed. A checkpoint in
which the required variables cannot be found is an error, never a silent fresh start.
"""
from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from detlab.weights.automl_checkpoint import (AutomlCheckpointError, check_architecture,
                                              describe_checkpoint, is_automl_checkpoint,
                                              match_automl_checkpoint, resolve_prefix)
from detlab.weights.automl_names import UnsupportedModelError, backbone_prefix

INIT_MODES = ("backbone", "detector")
HEADS = ("class_net", "box_net")
# Quantization-aware training's activation ranges (layers/fake_quant.py): a float checkpoint
# has none; the first training batch sets them.
OPTIONAL = ("fake_quant",)
_VALUE = "VARIABLE_VALUE"


class InitCheckpointError(ValueError):
  """The init checkpoint does not hold what `init_mode` needs (says what is missing)."""


def _object_graph(reader) -> trackable_object_graph_pb2.TrackableObjectGraph:
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  return graph


def _match(obj, node_id: int, graph, found: dict, seen: set) -> None:
  """Walks python object and checkpoint node together; found[id(var)] = (var, key)."""
  if id(obj) in seen:
    return
  seen.add(id(obj))
  node = graph.nodes[node_id]
  if isinstance(obj, tf.Variable):
    for attribute in node.attributes:
      if attribute.name == _VALUE:
        found[id(obj)] = (obj, attribute.checkpoint_key)
    return
  children = tf.train.TrackableView.children(obj)
  for ref in node.children:
    if ref.local_name in children and not _positional_over_all_layers(ref.local_name):
      _match(children[ref.local_name], ref.node_id, graph, found, seen)


def _positional_over_all_layers(name: str) -> bool:
  """A keras functional model tracks each layer twice: `layer-N` (index among all layers)
  and, for layers with variables, `layer_with_weights-N`. Only the second is followed: the
  first shifts with weightless layers (a classifier's stochastic-depth Dropout layers, which
  a detector's backbone without them lacks), pairing every later layer with the wrong one."""
  return name.startswith("layer-") and name[len("layer-"):].isdigit()


def _child(graph, node_id: int, name: str) -> int | None:
  for ref in graph.nodes[node_id].children:
    if ref.local_name == name:
      return ref.node_id
  return None


def _candidates(graph, mode: str) -> list[int]:
  """Checkpoint nodes that may correspond to the model (detector) or backbone."""
  roots = [0] + [n for n in [_child(graph, 0, "model")] if n is not None]
  if mode == "detector":
    return roots
  backbones = [_child(graph, r, "backbone") for r in roots]
  return [n for n in backbones if n is not None] + roots


def _part_of(model, variable) -> str:
  for part in ("backbone", "fpn", *HEADS, *OPTIONAL):
    sub = getattr(model, part, None)
    if sub is not None and any(v is variable for v in sub.variables):
      return part
  return "other"


def _object_graph_values(model, path: str, mode: str) -> tuple[str, dict]:
  """A detlab/TF2 checkpoint: {variable ref: (key, reader) or None if shapes differ}."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise InitCheckpointError(f"train.init_checkpoint: no checkpoint in directory {path}.")
    path = latest
  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as error:
    raise InitCheckpointError(f"train.init_checkpoint {path!r} cannot be read: {error}") \
        from error
  graph = _object_graph(reader)
  target = model.backbone if mode == "backbone" else model
  # The candidate node that matches the most variables is the model's counterpart.
  found: dict = {}
  for node_id in _candidates(graph, mode):
    attempt: dict = {}
    _match(target, node_id, graph, attempt, set())
    if len(attempt) > len(found):
      found = attempt
  shapes = reader.get_variable_to_shape_map()
  if mode == "backbone":  # a detector fine-tuned from a detector keeps its raw weights
    found = _prefer_ema(graph, found)
  values = {}
  for variable, key in found.values():
    fits = list(shapes[key]) == list(variable.shape)
    values[variable.ref()] = (lambda key=key: reader.get_tensor(key)) if fits else None
  return path, values


def _prefer_ema(graph, found: dict) -> dict:
  """A detlab training checkpoint's EMA shadows (`ema/<i>`, training/ema.py names each
  `<variable name with / as _>_ema`) in place of the raw weights they average, as the
  recipes evaluate and fine-tune from the average."""
  ema = _child(graph, 0, "ema")
  if ema is None:
    return found
  shadow_keys, full_names = {}, {}
  for node in graph.nodes:
    for attribute in node.attributes:
      if attribute.name == _VALUE:
        full_names[attribute.checkpoint_key] = attribute.full_name
  for ref in graph.nodes[ema].children:
    for attribute in graph.nodes[ref.node_id].attributes:
      if attribute.name == _VALUE:
        shadow_keys[attribute.full_name] = attribute.checkpoint_key
  swapped = {}
  for ident, (variable, key) in found.items():
    shadow = full_names.get(key, "").replace("/", "_") + "_ema"
    swapped[ident] = (variable, shadow_keys.get(shadow, key))
  used = sum(swapped[i][1] != found[i][1] for i in found)
  logging.info("init_checkpoint: %d of %d variables from the EMA shadows.", used, len(found))
  return swapped


def _automl_values(model, path: str, mode: str) -> tuple[str, dict]:
  """A google/automl EfficientDet bundle: the EMA weights, as the reference fine-tunes."""
  prefix = resolve_prefix(path)
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  try:
    if mode == "detector":
      check_architecture(model, shapes, path, same_classes=False)
    elif describe_checkpoint(shapes).backbone != backbone_prefix(model.backbone):
      raise InitCheckpointError(
          f"train.init_checkpoint {path} holds a {describe_checkpoint(shapes).backbone} "
          f"backbone, the model a {backbone_prefix(model.backbone)}.")
    matches, _ = match_automl_checkpoint(model, prefix, use_ema=True)
  except (AutomlCheckpointError, UnsupportedModelError) as error:
    raise InitCheckpointError(f"train.init_checkpoint: {error}") from error
  values = {}
  for m in matches:
    if m.value is not None:
      values[m.mapped.variable.ref()] = lambda value=m.value: value
    elif m.why != "not in checkpoint":
      values[m.mapped.variable.ref()] = None
  return prefix, values


def initialize_from_checkpoint(model, path: str, mode: str) -> dict:
  """Loads what fits from `path` into `model`; returns {part: {loaded, skipped, new}}.

  `path`: a detlab (TF2 object-based) checkpoint or model_dir, or a google/automl
  EfficientDet checkpoint (directory or prefix; its EMA weights are loaded).
  """
  if mode not in INIT_MODES:
    raise ValueError(f"train.init_mode must be one of {INIT_MODES}, got {mode!r}.")
  if is_automl_checkpoint(path):
    path, values = _automl_values(model, path, mode)
  else:
    path, values = _object_graph_values(model, path, mode)
  table: dict = {}
  missing = []
  for variable in model.variables:
    part = _part_of(model, variable)
    row = table.setdefault(part, {"loaded": 0, "skipped": 0, "new": 0})
    in_checkpoint = variable.ref() in values
    value = values.get(variable.ref())
    if value is not None:
      variable.assign(value())
      row["loaded"] += 1
      continue
    row["skipped" if in_checkpoint else "new"] += 1
    required = part == "backbone" if mode == "backbone" else part not in HEADS + OPTIONAL
    if required:
      why = "shape differs" if in_checkpoint else "not in checkpoint"
      missing.append(f"  {variable.name} {list(variable.shape)} ({why})")
  if missing:
    raise InitCheckpointError(
        f"train.init_checkpoint {path} does not fit init_mode={mode!r}: {len(missing)} "
        "required variable(s) cannot be loaded:\n" + "\n".join(missing[:20]) +
        ("\n  ..." if len(missing) > 20 else "") + "\nCheck that the checkpoint was written "
        "by this backbone/detector (same gin file), or use init_mode='backbone' for a "
        "checkpoint of another detector with the same backbone.")
  _print_table(path, mode, table)
  return table


def _print_table(path: str, mode: str, table: dict) -> None:
  lines = [f"Initialised from {path} (init_mode={mode}):",
           f"  {'part':<10} {'loaded':>7} {'skipped':>8} {'new':>5}"]
  for part, row in table.items():
    lines.append(f"  {part:<10} {row['loaded']:>7} {row['skipped']:>8} {row['new']:>5}")
  lines.append("  (skipped: in the checkpoint with another shape; new: not in it. Both keep "
               "their fresh initialisation.)")
  text = "\n".join(lines)
  logging.info(text)
  print(text, flush=True)
