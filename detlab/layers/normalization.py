"""Batch normalization with the papers' defaults and a sync-BN switch."""
import tf_keras as keras

# EfficientNet / EfficientDet use momentum 0.99 and epsilon 1e-3 (TF-slim convention).
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


def batch_norm(name: str | None = None, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON, synchronized: bool = False,
               axis: int = -1) -> keras.layers.BatchNormalization:
  """A BatchNormalization layer; `synchronized=True` all-reduces statistics across replicas."""
  return keras.layers.BatchNormalization(
      axis=axis, momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name)
