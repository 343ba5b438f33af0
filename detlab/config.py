"""Gin file resolution: a name found in gin_configs/ or a path, with helpful errors."""
import importlib
import logging
import os

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


def parse_gin(gin_files: list[str], gin_bindings: list[str]) -> None:
  """Parses gin files (names or paths) and bindings; includes resolve in gin_configs/ too."""
  import detlab.registry  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  root = logging.getLogger()  # gin logs through the root logger
  if not any(isinstance(f, _QuietGinIncludes) for f in root.filters):
    root.addFilter(_QuietGinIncludes())
  gin.add_config_file_search_path(gin_configs_dir())
  gin.parse_config_files_and_bindings([resolve_gin_file(f) for f in gin_files], gin_bindings)
