"""google/automl EfficientDet checkpoints (efficientdet-d0.tar.gz ... d7x, efficientdet-lite0
... lite4): read, identify, load.

The published checkpoints are TF1 name-based bundles (one tensor per reference variable name,
plus `<name>/ExponentialMovingAverage` shadows, which the reference loads by default).
`automl_names.py` says which name holds each detlab variable; here the bundle is read, the
EfficientDet it holds is identified from its shapes (so a D3 bundle given to a D0 config is an
error naming D3), and values are assigned: strictly (`load_automl_checkpoint`: every variable
of both sides used) or for fine-tuning (`match_automl_checkpoint`: what fits, per variable).
"""
import dataclasses
import re
import time

from absl import logging
import numpy as np
import tensorflow as tf

from detlab.progress import Progress, format_duration
from detlab.weights.automl_names import EMA_SUFFIX, Mapped, automl_names, backbone_prefix

# Reference variables that are no model weights: the step counter, optimizer slots.
_NOT_WEIGHTS = re.compile(r"(^global_step$|/Momentum$|/Adam(_\d+)?$|/RMSProp(_\d+)?$)")


class AutomlCheckpointError(ValueError):
  """The automl checkpoint does not fit the configured detector (says what would)."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What a checkpoint's (or model's) shapes fix; image size and anchor scale they do not."""
  backbone: str
  fpn_width: int
  fpn_cells: int
  head_repeats: int
  min_level: int
  max_level: int
  fusion: str            # 'fast' (WSM edge weights) or 'sum' (none)
  num_classes: int
  # BiFPN/head activation: no shape shows it; the reference pairs relu6 with the Lite
  # backbones (hparams_config's lite_common_param) and swish with B0-B7.
  activation: str = "swish"

  def text(self) -> str:
    return (f"{self.backbone}, BiFPN {self.fpn_width} x {self.fpn_cells} cells, head repeats "
            f"{self.head_repeats}, P{self.min_level}-P{self.max_level}, {self.fusion} fusion, "
            f"{self.activation} in BiFPN and heads, {self.num_classes} classes")


# The paper's scaling table (EfficientDet, Tan, Pang & Le 2020, Table 1; D7x from the reference
# code): backbone, BiFPN width, cells, head repeats, max level, fusion.
REFERENCE_MODELS = {
    "d0": ("efficientnet-b0", 64, 3, 3, 7, "fast"),
    "d1": ("efficientnet-b1", 88, 4, 3, 7, "fast"),
    "d2": ("efficientnet-b2", 112, 5, 3, 7, "fast"),
    "d3": ("efficientnet-b3", 160, 6, 4, 7, "fast"),
    "d4": ("efficientnet-b4", 224, 7, 4, 7, "fast"),
    "d5": ("efficientnet-b5", 288, 7, 4, 7, "fast"),
    "d6": ("efficientnet-b6", 384, 8, 5, 7, "sum"),
    "d7": ("efficientnet-b6", 384, 8, 5, 7, "sum"),  # D6's weights shape at 1536 px
    "d7x": ("efficientnet-b7", 384, 8, 5, 8, "sum"),
    # EfficientDet-Lite (google/automl hparams_config efficientdet_lite_param_dict).
    "lite0": ("efficientnet-lite0", 64, 3, 3, 7, "sum"),
    "lite1": ("efficientnet-lite1", 88, 4, 3, 7, "sum"),
    "lite2": ("efficientnet-lite2", 112, 5, 3, 7, "sum"),
    "lite3": ("efficientnet-lite3", 160, 6, 4, 7, "sum"),
    "lite3x": ("efficientnet-lite3", 200, 6, 4, 7, "sum"),
    "lite4": ("efficientnet-lite4", 224, 7, 4, 7, "sum"),
}
_BACKBONE = re.compile(r"efficientnet-(?:b|lite)\d(?=/)")


def display_name(model: str) -> str:
  """'d0' -> 'EfficientDet-D0', 'lite3x' -> 'EfficientDet-Lite3x'."""
  return "EfficientDet-" + (model.capitalize() if model.startswith("lite") else model.upper())


def reference_activation(backbone: str) -> str:
  """The reference's BiFPN/head activation for a checkpoint's backbone prefix."""
  return "relu6" if backbone.startswith("efficientnet-lite") else "swish"


def resolve_prefix(path: str) -> str:
  """A checkpoint directory (its `checkpoint` file, else its one *.index) or a prefix."""
  if not tf.io.gfile.isdir(path):
    return path
  latest = tf.train.latest_checkpoint(path)
  if latest:
    return latest
  indexes = tf.io.gfile.glob(f"{path.rstrip('/')}/*.index")
  if len(indexes) == 1:
    return indexes[0][:-len(".index")]
  raise AutomlCheckpointError(f"No single checkpoint in {path}: found {len(indexes)} *.index "
                              "files; pass the prefix (e.g. DIR/model).")


def is_automl_checkpoint(path: str) -> bool:
  """Whether `path` (directory or prefix) is a name-based automl EfficientDet bundle."""
  try:
    reader = tf.train.load_checkpoint(resolve_prefix(path))
  except (tf.errors.OpError, ValueError, AutomlCheckpointError):
    return False
  if reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
    return False
  names = reader.get_variable_to_shape_map()
  return any(n.startswith("fpn_cells/") or re.match(r"efficientnet-(?:b|lite)\d/stem/", n)
             for n in names)


def describe_checkpoint(shapes: dict) -> Architecture:
  """The EfficientDet a bundle holds, from its variable names and shapes."""
  backbones = {m.group(0) for n in shapes for m in [_BACKBONE.match(n)] if m}
  cells = {int(m.group(1)) for n in shapes for m in [re.match(r"fpn_cells/cell_(\d+)/", n)] if m}
  repeats = {int(m.group(1)) for n in shapes
             for m in [re.match(r"class_net/class-(\d+)/", n)] if m}
  levels = {int(m.group(1)) for n in shapes
            for m in [re.match(r"class_net/class-0-bn-(\d+)/gamma$", n)] if m}
  try:
    width = shapes["class_net/class-0/pointwise_kernel"][-1]
    anchors = shapes["box_net/box-predict/bias"][0] // 4
    classes = shapes["class_net/class-predict/bias"][0] // anchors
  except KeyError as error:
    raise AutomlCheckpointError(f"Not an automl EfficientDet checkpoint: no {error}.") from error
  if len(backbones) != 1 or not cells or not levels:
    raise AutomlCheckpointError("Not an automl EfficientDet checkpoint: backbone(s) "
                                f"{sorted(backbones)}, {len(cells)} BiFPN cells.")
  fusion = "fast" if "fpn_cells/cell_0/fnode0/WSM" in shapes else "sum"
  backbone = backbones.pop()
  return Architecture(backbone, width, max(cells) + 1, max(repeats) + 1, min(levels),
                      max(levels), fusion, classes, reference_activation(backbone))


def describe_model(model) -> Architecture:
  return Architecture(backbone_prefix(model.backbone), model.fpn.width, model.fpn.num_cells,
                      len(model.class_net.convs), model.fpn.min_level, model.fpn.max_level,
                      model.fpn.fusion, model.num_classes, str(model.fpn.activation))


def guess_models(arch: Architecture) -> list[str]:
  """The reference EfficientDets ('d0' ... 'd7x', 'lite0' ... 'lite4') whose weights have
  this architecture."""
  key = (arch.backbone, arch.fpn_width, arch.fpn_cells, arch.head_repeats, arch.max_level,
         arch.fusion)
  return [name for name, row in REFERENCE_MODELS.items()
          if row == key and arch.min_level == 3]


def check_architecture(model, shapes: dict, path: str, *, same_classes: bool = True) -> None:
  """Raises AutomlCheckpointError naming the Dk the checkpoint looks like when it differs."""
  held, configured = describe_checkpoint(shapes), describe_model(model)
  if dataclasses.replace(held, num_classes=0) != dataclasses.replace(configured, num_classes=0):
    guesses = guess_models(held)
    looks = (" or ".join(display_name(g) for g in guesses) if guesses
             else "no reference EfficientDet")
    gin = (f"; use --gin_file=efficientdet_{guesses[0]}.gin" if guesses else "")
    raise AutomlCheckpointError(
        f"{path} looks like {looks} ({held.text()}), but the gin files configure "
        f"{configured.text()}{gin}.")
  if same_classes and held.num_classes != configured.num_classes:
    raise AutomlCheckpointError(
        f"{path} has {held.num_classes} classes, the model {configured.num_classes}: bind "
        f"NUM_CLASSES = {held.num_classes} to load it, or fine-tune to your classes with "
        f"train.init_checkpoint='{path}'.")


@dataclasses.dataclass
class Match:
  mapped: Mapped
  value: np.ndarray | None   # None: not loadable (see `why`)
  why: str = ""              # 'not in checkpoint' / 'shape differs'
  from_ema: bool = False


def _value(reader, shapes, names: list[str], use_ema: bool) -> tuple[np.ndarray | None, bool]:
  if not all(n in shapes for n in names):
    return None, False
  ema = use_ema and all(n + EMA_SUFFIX in shapes for n in names)
  values = [reader.get_tensor(n + EMA_SUFFIX if ema else n) for n in names]
  return (np.stack(values) if len(names) > 1 else values[0]), ema


def match_automl_checkpoint(model, path: str, use_ema: bool = True,
                            progress: Progress | None = None) -> tuple[list[Match], list[str]]:
  """Each model variable's value from the bundle (EMA shadow when use_ema and present), and
  the bundle's weight names no model variable used."""
  reader = tf.train.load_checkpoint(resolve_prefix(path))
  shapes = reader.get_variable_to_shape_map()
  matches, used = [], set()
  mapped = automl_names(model)
  for index, entry in enumerate(mapped):
    value, ema = _value(reader, shapes, entry.names, use_ema)
    used.update(entry.names)
    if value is None:
      matches.append(Match(entry, None, "not in checkpoint"))
    elif list(value.shape) != entry.variable.shape.as_list():
      matches.append(Match(entry, None, f"shape differs: checkpoint {list(value.shape)}"))
    else:
      matches.append(Match(entry, value, from_ema=ema))
    if progress is not None:
      progress.update(index + 1, prefix="automl checkpoint: ")
  unused = sorted(n for n in shapes if not n.endswith(EMA_SUFFIX) and n not in used
                  and not _NOT_WEIGHTS.search(n))
  return matches, unused


def load_automl_checkpoint(model, path: str, use_ema: bool = True) -> dict:
  """Loads every variable of `model` from an automl bundle; all of its weights must be used.

  Returns {"checkpoint", "variables", "from_ema", "seconds"}. Raises AutomlCheckpointError
  (nothing assigned) for another Dk or class count, a missing/ill-shaped variable, or
  checkpoint weights left unmapped (listed).
  """
  started = time.monotonic()
  prefix = resolve_prefix(path)
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  check_architecture(model, shapes, path)
  mapped_count = len(automl_names(model))
  matches, unused = match_automl_checkpoint(model, prefix, use_ema,
                                            Progress(mapped_count, unit="variables"))
  problems = [f"  {m.mapped.variable.name} <- {', '.join(m.mapped.names)} ({m.why})"
              for m in matches if m.value is None]
  problems += [f"  {name} (in the checkpoint, mapped to no variable)" for name in unused]
  if problems:
    raise AutomlCheckpointError(
        f"{path} does not map onto this model; {len(problems)} problem(s):\n" +
        "\n".join(problems[:40]) + ("\n  ..." if len(problems) > 40 else ""))
  for m in matches:
    m.mapped.variable.assign(m.value)
  from_ema = sum(m.from_ema for m in matches)
  if use_ema and from_ema < len(matches):
    logging.warning("%s: %d of %d variables have no ExponentialMovingAverage shadow; their "
                    "raw values were loaded.", path, len(matches) - from_ema, len(matches))
  seconds = time.monotonic() - started
  logging.info("Loaded %d variables (%d EMA) from %s in %s.", len(matches), from_ema, path,
               format_duration(seconds))
  return {"checkpoint": prefix, "variables": len(matches), "from_ema": from_ema,
          "seconds": seconds}
