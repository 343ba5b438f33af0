"""Residual add with a scaled branch (Inception-ResNet)."""
import tf_keras as keras


class ScaledResidual(keras.layers.Layer):
  """[shortcut, branch] -> shortcut + scale * branch (same shapes). No weights.

  Szegedy et al. 2016 scale residuals by 0.1-0.3 before the add to keep very wide residual
  Inception networks stable.
  """

  def __init__(self, scale: float, **kwargs):
    super().__init__(**kwargs)
    self.scale = scale

  def call(self, inputs):
    shortcut, branch = inputs
    return shortcut + branch * self.scale

  def get_config(self) -> dict:
    return {**super().get_config(), "scale": self.scale}
