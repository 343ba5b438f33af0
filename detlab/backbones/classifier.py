"""What the classifier form (`include_top=True`) of a backbone returns, and its geometry.

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
import tf_keras as keras

from detlab.backbones.contract import features_model
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


def classification_model(inputs, logits, aux_logits: dict | None, aux_loss_weight: float,
                         name: str) -> keras.Model:
  """A logits Model, wrapped in `AuxLogitsClassifier` when `aux_logits` ({key: [B, K]}) is given."""
  inference = functional_model(inputs, logits, name=name)
  if not aux_logits:
    return inference
  training = functional_model(inputs, {"logits": logits, **aux_logits}, name=name + "_train")
  model = AuxLogitsClassifier(inference, training,
                              {key: aux_loss_weight for key in aux_logits}, name=name)
  model(inputs)  # builds the wrapper (symbolic call, inference path)
  return model


def backbone_or_classifier(inputs, x, endpoints: dict, *, include_top: bool, num_classes: int,
                           dropout: float, aux_logits: dict | None, aux_loss_weight: float,
                           min_level: int, max_level: int, name: str) -> keras.Model:
  """The end of an Inception-style builder: the {str(level)} feature extractor, or the paper's
  top (global average pool -> dropout -> FC, keras layer names) as a classifier."""
  if not include_top:
    return features_model(inputs, endpoints, min_level, max_level, name=name)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  x = keras.layers.Dropout(dropout, name="top_dropout")(x)
  logits = keras.layers.Dense(num_classes, name="predictions")(x)
  return classification_model(inputs, logits, aux_logits, aux_loss_weight, name)
