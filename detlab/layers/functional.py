"""Building deep tf_keras functional models within Python's default recursion limit.

tf_keras maps a functional graph (`keras.Model(inputs, outputs)`, also inside `clone_model`)
with a recursive walk that takes one Python frame per layer on the longest input-to-output
path. The deepest detlab backbones come close to or past Python's default limit of 1000 frames
on their own (stack depth at the walk's deepest call, from a top-level script: EfficientNetV2-XL
1021, V2-L 798, B7 600, V2-M 578; Inception-ResNet v2 130, Inception v4 105), so
whether a build succeeded used to depend on how deep the caller's stack already was (pytest
adds a hundred frames or more). Every functional model in detlab is built through
`functional_model`, which raises the limit by a bounded amount for the duration of the build
and restores it after, so users never have to set anything themselves.
"""
import contextlib
import sys
import threading

import tf_keras as keras

# Frames allowed above the caller's current depth while a graph is mapped: ten times the
# deepest registered backbone's walk, yet far below what the interpreter's own stack takes
# (Python >= 3.11 runs Python-to-Python calls without growing the C stack).
HEADROOM_FRAMES = 10_000

_lock = threading.Lock()
_active = 0
_saved_limit: int | None = None


def _stack_depth() -> int:
  depth, frame = 0, sys._getframe()  # pylint: disable=protected-access
  while frame is not None:
    depth, frame = depth + 1, frame.f_back
  return depth


@contextlib.contextmanager
def deep_graph_recursion(headroom: int = HEADROOM_FRAMES):
  """Within the block the recursion limit is at least the current depth + `headroom`.

  Re-entrant (a builder that calls another builder) and shared by threads: the limit the
  first entrant found is restored when the last one leaves, and it is never lowered.
  """
  global _active, _saved_limit
  needed = _stack_depth() + headroom
  with _lock:
    if _active == 0:
      _saved_limit = sys.getrecursionlimit()
    _active += 1
    if sys.getrecursionlimit() < needed:
      sys.setrecursionlimit(needed)
  try:
    yield
  finally:
    with _lock:
      _active -= 1
      if _active == 0:
        sys.setrecursionlimit(_saved_limit)
        _saved_limit = None


def functional_model(inputs, outputs, name: str | None = None) -> keras.Model:
  """`keras.Model(inputs, outputs, name=name)`, built within `deep_graph_recursion`."""
  with deep_graph_recursion():
    return keras.Model(inputs, outputs, name=name)
