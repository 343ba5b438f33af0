"""A two-BN net for the BN re-estimation tests (test_bn_reestimation.py and, in its fresh
process, bn_reestimation_mirrored_check.py): builds in milliseconds, holds a stock tf_keras
BatchNormalization and detlab's, with a Dropout between them that the statistics pass must
leave off."""
import tf_keras as keras

from detlab.layers.normalization import BatchNormalization

SIZE = 16


def two_bn_net(seed: int) -> keras.Model:
  """conv -> stock BN -> ReLU -> Dropout(0.5) -> conv -> detlab BN -> pool -> dense."""
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
  x = keras.layers.BatchNormalization(name="bn1")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Dropout(0.5, name="drop")(x)
  x = keras.layers.Conv2D(5, 3, strides=2, padding="same", name="conv2")(x)
  x = BatchNormalization(name="bn2")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
