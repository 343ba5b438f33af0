"""Writes a detlab model's weights as a google/automl-style TF1 name-based bundle (through
detlab's own name mapping), for tests that need no reference fixture."""
import numpy as np
import tensorflow as tf

from detlab.weights.automl_names import EMA_SUFFIX, automl_names


def bundle_tensors(model, ema_offset: float = 0.5) -> dict:
  """{reference name: value}: each weight, and its EMA shadow = weight + ema_offset."""
  tensors = {}
  for entry in automl_names(model):
    value = entry.variable.numpy()
    parts = list(value) if len(entry.names) > 1 else [value]  # WSM scalars
    for name, part in zip(entry.names, parts):
      tensors[name] = np.asarray(part)
      tensors[name + EMA_SUFFIX] = np.asarray(part) + ema_offset
  return tensors


def write_bundle(tensors: dict, prefix: str) -> str:
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return prefix
