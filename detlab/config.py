"""Gin file resolution: a name found in gin_configs/ or a path, with helpful errors."""
import difflib
import importlib
import logging
import os
import re

import gin
import tensorflow as tf

import detlab


def gin_configs_dir() -> str:
  """gin_configs/ as installed (package `detlab.gin_configs`) or in a source checkout."""
  try:
    return os.path.dirname(importlib.import_module("detlab.gin_configs").__file__)
  except ImportError:  # editable/develop installs map only `detlab` itself
    return os.path.join(os.path.dirname(os.path.dirname(detlab.__file__)), "gin_configs")


def available_gin_files() -> list[str]:
  return sorted(f for f in os.listdir(gin_configs_dir()) if f.endswith(".gin"))


def resolve_gin_file(name: str) -> str:
  """A path as given if it exists, else the file of that name in gin_configs/."""
  if tf.io.gfile.exists(name):
    return name
  candidate = os.path.join(gin_configs_dir(), name if name.endswith(".gin") else name + ".gin")
  if os.path.exists(candidate):
    return candidate
  raise FileNotFoundError(
      f"Unknown gin file {name!r}: it is neither a path nor one of detlab's gin files.\n"
      f"Available gin files (in {gin_configs_dir()}):\n  " +
      "\n  ".join(available_gin_files()))


class _QuietGinIncludes(logging.Filter):
  """gin logs 'Path not found' at ERROR while it tries each location of an include before the
  search path that holds it; the include then resolves, so the message only misleads."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("Path not found:", "system_path_file_exists:"))


# The configs detlab writes into a model_dir (training/experiment.py); one written before
# train.task existed binds the detector on train() itself.
SAVED_CONFIGS = ("operative_config.gin", "config.gin")
_SAVED_DETECTION = {"model_fn": "model_fn", "train_input": "train_input",
                    "eval_input": "eval_input", "loss": "loss",
                    "postprocess": "postprocess_config"}
_SAVED_LEGACY = re.compile(r"^train\.(%s)(\s*=)" % "|".join(_SAVED_DETECTION), re.MULTILINE)


def upgrade_saved_config(text: str) -> str:
  """A model_dir config of a release before train.task, in today's form: its
  `train.model_fn/train_input/eval_input/loss/postprocess` bindings become DetectionTask's and
  `train.task = @DetectionTask()` is added. A config without them is returned as it is."""
  if not _SAVED_LEGACY.search(text):
    return text
  text = _SAVED_LEGACY.sub(lambda m: f"DetectionTask.{_SAVED_DETECTION[m.group(1)]}{m.group(2)}",
                           text)
  if not re.search(r"^train\.task\s*=", text, re.MULTILINE):
    text += "\ntrain.task = @DetectionTask()\n"
  return text


def parse_gin(gin_files: list[str], gin_bindings: list[str]) -> None:
  """Parses gin files (names or paths) and bindings; includes resolve in gin_configs/ too.
  A model_dir's saved config (SAVED_CONFIGS) of an older release is upgraded first
  (`upgrade_saved_config`): runs trained before train.task still export and evaluate; a user's
  own gin file with those bindings is refused by train() with the binding to use."""
  import detlab.registry  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  root = logging.getLogger()  # gin logs through the root logger
  if not any(isinstance(f, _QuietGinIncludes) for f in root.filters):
    root.addFilter(_QuietGinIncludes())
  gin.add_config_file_search_path(gin_configs_dir())
  try:
    for path in (resolve_gin_file(f) for f in gin_files):
      if os.path.basename(path) in SAVED_CONFIGS:
        with tf.io.gfile.GFile(path) as f:
          gin.parse_config(upgrade_saved_config(f.read()))
      else:
        gin.parse_config_file(path)
    gin.parse_config(gin_bindings)
    gin.finalize()
  except ValueError as error:
    hint = unknown_reference_hint(str(error))
    if hint:
      raise ValueError(f"{error}\n{hint}") from error
    raise


_UNKNOWN_REFERENCE = re.compile(r"No configurable matching reference '@([\w./]+?)(\(\))?'")


def unknown_reference_hint(message: str) -> str | None:
  """For gin's "No configurable matching reference '@name'": the registered backbones (the
  name users most often mistype, e.g. `classifier.backbone_fn = @efficentnet_b0`) and the
  closest registered names."""
  match = _UNKNOWN_REFERENCE.search(message)
  if not match:
    return None
  from detlab.backbones import BACKBONES  # pylint: disable=import-outside-toplevel
  name = match.group(1).rsplit(".", 1)[-1]
  registered = {selector.rsplit(".", 1)[-1]
                for selector, _ in gin.config._REGISTRY.items()}  # pylint: disable=protected-access
  close = difflib.get_close_matches(name, sorted(registered), n=3, cutoff=0.6)
  lines = [f"Did you mean: {', '.join('@' + c for c in close)}?"] if close else []
  lines.append("Registered backbones: " + ", ".join(sorted(BACKBONES)) + ".")
  return "\n".join(lines)
