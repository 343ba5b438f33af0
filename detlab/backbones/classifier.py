"""What the classifier form (`include_top=True`) of a backbone returns, and its geometry;
`ClassifierOrExtractor`, the frame every Inception-style builder shares, builds both forms.

Output convention for networks with auxiliary classifiers (GoogLeNet, Inception v3/v4,
Inception-ResNet-v2):
  * `model(images, training=True)` -> dict {"logits": [B, K], "aux_logits...": [B, K], ...}.
    A single aux head is keyed "aux_logits"; GoogLeNet's two are "aux_logits_4a" and
    "aux_logits_4d". `model.aux_loss_weights` maps each aux key to its loss weight, so
    total loss = CE(logits) + sum_k w_k * CE(outputs[k]).
  * `model(images)` / `training=False` -> logits [B, K] only; the aux heads are not run.
  * `model.inference_model` is the plain functional logits model (shares all weights; aux
    heads absent): count its parameters, export it, import weights into it.
Networks without aux heads return a plain functional Model producing logits.
"""
from typing import Callable

import tensorflow as tf
import tf_keras as keras

from detlab.backbones.contract import features_model
from detlab.layers.aux_head import inception_aux_head
from detlab.layers.functional import functional_model


def resolve_geometry(include_top: bool, padding: str | None, input_shape, native_size: int):
  """Picks ('valid'|'same', input_shape) for a builder.

  padding None: the paper's 'valid' stems/reductions for the classifier (exact 299-geometry,
  what keras applications do), 'same' for the feature extractor (level l is ceil(S/2^l)).
  input_shape None: (native, native, 3) for the classifier (aux heads need a static size),
  (None, None, 3) for the feature extractor.
  """
  if padding is None:
    padding = "valid" if include_top else "same"
  if padding not in ("valid", "same"):
    raise ValueError(f"padding must be 'valid', 'same' or None, got {padding!r}.")
  if input_shape is None:
    input_shape = (native_size, native_size, 3) if include_top else (None, None, 3)
  return padding, tuple(input_shape)


class AuxLogitsClassifier(keras.Model):
  """Runs the aux heads only in training mode (see the module docstring for the outputs)."""

  def __init__(self, inference_model: keras.Model, training_model: keras.Model,
               aux_loss_weights: dict, **kwargs):
    super().__init__(**kwargs)
    self.inference_model = inference_model
    self.training_model = training_model
    self.aux_loss_weights = dict(aux_loss_weights)

  def call(self, images, training=None):
    if training:
      return self.training_model(images, training=True)
    return self.inference_model(images, training=training)


def classification_model(inputs, logits, aux_logits: dict | None, aux_loss_weights: dict,
                         name: str) -> keras.Model:
  """A logits Model, wrapped in `AuxLogitsClassifier` when `aux_logits` ({key: [B, K]}) is
  given; `aux_loss_weights` maps each of its keys to its loss weight."""
  inference = functional_model(inputs, logits, name=name)
  if not aux_logits:
    return inference
  training = functional_model(inputs, {"logits": logits, **aux_logits}, name=name + "_train")
  model = AuxLogitsClassifier(inference, training, aux_loss_weights, name=name)
  model(inputs)  # builds the wrapper (symbolic call, inference path)
  return model


class ClassifierOrExtractor:
  """The frame an Inception-style builder (GoogLeNet ... Xception) puts around its network.

  Made from the builder's top arguments before the network: `input` resolves the geometry
  and makes the "image" input; `aux_head` builds a training-only aux classifier where the
  network places one (only for the classifier, and only when asked for); `model`, after the
  network, returns the {str(level)} feature extractor, or the paper's top (global average
  pool -> dropout -> FC, keras layer names) as a classifier.
  """

  def __init__(self, include_top: bool, num_classes: int, dropout: float, min_level: int,
               max_level: int, name: str):
    self.include_top, self.num_classes, self.dropout = include_top, num_classes, dropout
    self.min_level, self.max_level, self.name = min_level, max_level, name
    self.inputs = None
    self.aux_logits, self.aux_loss_weights = {}, {}

  def input(self, padding: str | None, input_shape, native_size: int):
    """(padding, the "image" keras.Input): `resolve_geometry`'s choice for this form."""
    padding, input_shape = resolve_geometry(self.include_top, padding, input_shape, native_size)
    self.inputs = keras.Input(shape=input_shape, name="image")
    return padding, self.inputs

  def aux_head(self, enabled: bool, key: str, loss_weight: float,
               head: Callable[..., tf.Tensor], *args) -> None:
    """Aux output `key` = `head(*args)` (logits [B, K]) with `loss_weight`, built only for the
    classifier and when `enabled`; otherwise `head` is not called (no layers are made)."""
    if self.include_top and enabled:
      self.aux_logits[key] = head(*args)
      self.aux_loss_weights[key] = loss_weight

  def inception_aux_head(self, x, enabled: bool, loss_weight: float, sync_bn: bool) -> None:
    """The aux head of Inception v3/v4/ResNet-v2 (with BN, layers `aux_*`) on `x`, as the
    single aux output "aux_logits"."""
    self.aux_head(enabled, "aux_logits", loss_weight, inception_aux_head, x, self.num_classes,
                  "aux", sync_bn)

  def model(self, x, endpoints: dict) -> keras.Model:
    """The extractor of `endpoints` ({str(level): tensor}), or the classifier on `x`."""
    if not self.include_top:
      return features_model(self.inputs, endpoints, self.min_level, self.max_level,
                            name=self.name)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(self.dropout, name="top_dropout")(x)
    logits = keras.layers.Dense(self.num_classes, name="predictions")(x)
    return classification_model(self.inputs, logits, self.aux_logits, self.aux_loss_weights,
                                self.name)
