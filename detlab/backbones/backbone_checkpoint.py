"""A backbone-only checkpoint made from imported classifier weights, for fine-tuning.

Layout: `tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=<feature extractor>))`, i.e.
the object path `model/backbone/...` a detector checkpoint also has, which
`train.init_checkpoint=DIR` with `train.init_mode='backbone'` loads into any detector built on
the same backbone (detlab.training.initialize). Beside it, backbone.json names the backbone,
its input convention and where the weights came from.
"""
import dataclasses
import os

import tensorflow as tf
import tf_keras as keras

from detlab.backbones import BACKBONES, input_convention
from detlab.backbones.weight_import import WeightImportError, weighted_layers
from detlab.io import write_json

# Families whose classifier has training-only aux heads (not in keras/slim inference graphs).
_AUX_FAMILIES = ("inception_v1", "inception_v3", "inception_v4", "inception_resnet_v2")


def builder_of(name: str):
  if name not in BACKBONES:
    raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
  return BACKBONES[name]


def build_classifier(name: str, num_classes: int, **kwargs) -> keras.Model:
  """The inference classifier of backbone `name` (aux heads left out), native geometry."""
  if name in _AUX_FAMILIES:
    kwargs.setdefault("aux_logits", False)
  return builder_of(name)(include_top=True, num_classes=num_classes, **kwargs)


def extractor_from_classifier(name: str, classifier: keras.Model, **kwargs) -> keras.Model:
  """The feature extractor (include_top=False, as detectors build it; kwargs as the builder's)
  with the classifier's weights, copied layer by layer by name (padding may differ, weight
  shapes do not)."""
  backbone = builder_of(name)(**kwargs)
  source = weighted_layers(getattr(classifier, "inference_model", classifier))
  missing = [n for n in weighted_layers(backbone) if n not in source]
  if missing:
    raise WeightImportError(f"{name}: classifier lacks extractor layers {missing[:10]}")
  for layer_name, layer in weighted_layers(backbone).items():
    layer.set_weights(source[layer_name].get_weights())
  return backbone


def save_backbone_checkpoint(name: str, backbone: keras.Model, output_dir: str,
                             source: str, builder_kwargs: dict | None = None) -> str:
  """Writes the checkpoint (+ backbone.json) into output_dir; returns the checkpoint prefix."""
  tf.io.gfile.makedirs(output_dir)
  checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=backbone))
  prefix = tf.train.CheckpointManager(checkpoint, output_dir, max_to_keep=1).save()
  info = {"backbone": name, "source": source,
          "input_convention": dataclasses.asdict(input_convention(name)),
          "builder_kwargs": builder_kwargs or {},
          "usage": f"train.init_checkpoint='{output_dir}' train.init_mode='backbone'" +
                   "".join(f" {name}.{k}={v!r}" for k, v in (builder_kwargs or {}).items())}
  write_json(os.path.join(output_dir, "backbone.json"), info, indent=2)
  return prefix
