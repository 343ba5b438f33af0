"""A gin-registered backbone that builds in milliseconds, for training tests. Subprocesses
load it with the gin binding `import tests.training.tiny_backbone` (run from the repo root)."""
import gin
import tf_keras as keras

from detlab.backbones.contract import features_model


@gin.register(module="tests.training")
def tiny_test_backbone(input_shape=(None, None, 3), sync_bn: bool = False, **_) -> keras.Model:
  """Four strided 3x3 convs + one BN -> levels 2..5 (8/16/24/32 channels): builds in ms."""
  inputs = keras.Input(shape=input_shape)
  x, endpoints = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs), {}
  x = keras.layers.BatchNormalization(synchronized=sync_bn, name="stem_bn")(x)
  for level, channels in zip(range(2, 6), (8, 16, 24, 32)):
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name=f"conv{level}")(x)
    endpoints[str(level)] = x
  return features_model(inputs, endpoints, 2, 5, name="tiny")
