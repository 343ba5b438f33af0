"""The backbone contract: a tf_keras Model returning `{str(level): tensor}`.

Level l has spatial size ceil(S / 2**l) for an input of size S (SAME padding).
"""
import tf_keras as keras

from detlab.layers.functional import functional_model


def features_model(inputs, endpoints: dict, min_level: int, max_level: int,
                   name: str) -> keras.Model:
  """Wraps endpoints {str(level): tensor} into a Model with outputs for min..max level."""
  missing = [l for l in range(min_level, max_level + 1) if str(l) not in endpoints]
  if missing:
    raise ValueError(f"{name} has no feature level(s) {missing}; it provides levels "
                     f"{sorted(int(k) for k in endpoints)}.")
  outputs = {str(l): endpoints[str(l)] for l in range(min_level, max_level + 1)}
  model = functional_model(inputs, outputs, name=name)
  model.min_level, model.max_level = min_level, max_level
  return model


def feature_channels(backbone: keras.Model) -> dict:
  """{str(level): channels} of a feature-extractor backbone."""
  return {k: int(v.shape[-1]) for k, v in backbone.output.items()}
