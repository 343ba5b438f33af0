"""Non-trivial BN statistics and biases for folding tests (a fresh BN is the identity up to
epsilon, and a fresh bias is 0, so folding a fresh model proves little). Every caller passes
its seed: the values never depend on what ran before."""
import numpy as np
import tf_keras as keras


def randomize_batch_norms(model: keras.Model, *, seed: int) -> None:
  rng = np.random.default_rng(seed)
  for layer in model.submodules:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.moving_mean.shape[0]
      layer.moving_mean.assign(rng.normal(0.0, 0.2, n))
      layer.moving_variance.assign(rng.uniform(0.5, 1.5, n))
      if layer.scale:
        layer.gamma.assign(rng.uniform(0.5, 1.5, n))
      if layer.center:
        layer.beta.assign(rng.normal(0.0, 0.2, n))


def randomize_biases(model: keras.Model, *, seed: int) -> None:
  rng = np.random.default_rng(seed)
  for layer in model.submodules:
    if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
      layer.bias.assign(rng.normal(0.0, 0.2, layer.bias.shape[0]))
