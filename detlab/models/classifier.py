"""Classifier = a registered backbone's feature extractor + its family's classification head.

The backbone is the very model detection builds (`include_top=False`), kept as attribute
`.backbone`, so a classifier checkpoint holds `model/backbone/...` with the detector's backbone
layout and detection's `init_mode='backbone'` loads it.

Outputs:
  * `model(images, training=True)` -> {"logits": [B, K], <aux key>: [B, K], ...}; the aux
    heads (GoogLeNet: "aux_logits_4a", "aux_logits_4d"; Inception v3/v4/ResNet-v2:
    "aux_logits") run only here. `model.aux_loss_weights` = {aux key: weight}, so the loss is
    CE(logits) + sum_k w_k CE(outputs[k]). Without aux heads the dict holds "logits" only.
  * `model(images)` / `training=False` -> logits [B, K].
  * `model.inference_model`: the functional logits model (shares all weights, no aux heads):
    count its parameters, export it.
"""
from typing import Callable

import gin
import tf_keras as keras

from detlab.backbones import BACKBONES
from detlab.backbones.classifier import AuxLogitsClassifier
from detlab.heads.classification import HEAD_SPECS, aux_logits, classification_logits
from detlab.layers.functional import functional_model
from detlab.layers.scheduled_dropout import ScheduledDropout


class Classifier(AuxLogitsClassifier):
  """Runs the aux heads only in training mode (see the module docstring); `.backbone` is
  the detector's feature extractor."""

  def __init__(self, backbone: keras.Model, inference_model: keras.Model,
               training_model: keras.Model, aux_loss_weights: dict, **kwargs):
    super().__init__(inference_model, training_model, aux_loss_weights, **kwargs)
    self.backbone = backbone


def backbone_name(backbone_fn: str | Callable) -> str:
  """The registered name of `backbone_fn` (a name or a builder); errors list the names."""
  if isinstance(backbone_fn, str):
    name = backbone_fn
  else:
    name = next((k for k, fn in BACKBONES.items() if fn is backbone_fn),
                getattr(backbone_fn, "__name__", repr(backbone_fn)))
  if name not in BACKBONES:
    raise ValueError(f"Unknown backbone {name!r}. Registered backbones: "
                     f"{', '.join(BACKBONES)}.")
  return name


@gin.register(module="detlab.models")
def classifier(backbone_fn: str | Callable, num_classes: int = 1000,
               dropout_rate: float | None = None, aux_heads: bool = True,
               image_size: int | None = None, sync_bn: bool = False,
               scheduled_dropout: bool = False, head_init: str = "reference",
               **backbone_kwargs) -> Classifier:
  """A classifier on a registered backbone.

  Args:
    backbone_fn: a registered builder (`@efficientnet_b0`) or its name ('efficientnet_b0').
    num_classes: K, the width of every logits output.
    dropout_rate: before the FC; None -> the family's paper value (EfficientNet B0-B7 0.2,
      0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5; V2 S 0.2, M 0.3, L/XL 0.4; GoogLeNet 0.4; ...).
    aux_heads: build the family's training-only auxiliary classifiers (if it has any). They
      need a static image size (`image_size`) with a level-4 grid of at least 5x5.
    image_size: S for a static [B, S, S, 3] input; None -> dynamic (no aux heads possible).
    sync_bn: synchronized BN across replicas (the head's BNs too).
    scheduled_dropout: the dropout is a ScheduledDropout (its rate set per training step by
      progressive learning, detlab.data.progressive; `dropout_rate` is its final rate).
    head_init: the final FC's initialisation: "reference" (the papers' recipes), "fan_in"
      or "zeros" (few-class / fine-tuning runs: the loss starts near, or at, ln
      num_classes); see detlab/heads/classification.py. Aux heads keep their own.
    **backbone_kwargs: passed to the backbone builder (e.g. drop_connect_rate).
  Input: preprocessed float32 images [B, S, S, 3] (the backbone's input convention).
  """
  name = backbone_name(backbone_fn)
  spec = HEAD_SPECS[name]
  if num_classes < 1:
    raise ValueError(f"classifier.num_classes must be >= 1, got {num_classes}.")
  sites = spec.aux_sites if aux_heads else ()
  if sites and image_size is None:
    raise ValueError(f"{name}'s auxiliary heads need a static input size: set "
                     "classifier.image_size (e.g. to IMAGE_SIZE) or classifier.aux_heads=False.")
  input_shape = (None, None, 3) if image_size is None else (image_size, image_size, 3)
  backbone = BACKBONES[name](include_top=False, input_shape=input_shape, sync_bn=sync_bn,
                             **backbone_kwargs)
  dropout = spec.dropout if dropout_rate is None else dropout_rate
  if scheduled_dropout:
    dropout = ScheduledDropout(dropout, name="top_dropout")
  features = backbone.output[str(backbone.max_level)]
  logits = classification_logits(features, spec, num_classes, dropout, sync_bn, head_init)
  inference = functional_model(backbone.input, logits, name=f"{name}_classifier")
  aux = aux_logits(backbone, sites, num_classes, sync_bn)
  training = functional_model(backbone.input, {"logits": logits, **aux},
                              name=f"{name}_classifier_train")
  model = Classifier(backbone, inference, training,
                     {site.key: site.loss_weight for site in sites}, name=f"{name}_classifier")
  model(backbone.input)  # builds the wrapper (symbolic call, inference path)
  return model
