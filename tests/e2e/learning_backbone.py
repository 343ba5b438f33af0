"""A small ReLU conv net registered as a backbone, for the classification, segmentation and
joint learning gates (tests/e2e/test_learning_*.py).

EfficientNet-B0 from scratch stays at chance on the built-in classification set for the
first few hundred steps (measured: top-1 0.105 and 0.09 after 300 steps of batch 16 at
32 px; its reference head init starts 10-class logits at std ~5, class loss ~6), and
tests/training/tiny_backbone.py has no non-linearity (a segmenter on it: mIoU 0.224 vs 0.243
on this net, same run). This net learns in a few hundred 32-64 px steps, so the gates guard
the tasks' pipelines (labels, input, loss, evaluation) within their CPU budget.
Subprocesses load it with the gin binding `import tests.e2e.learning_backbone` (run from the
repo root), which registers it on import; in-process, use it inside `with registered():`,
which takes it out of BACKBONES / HEAD_SPECS again afterwards.
"""
import contextlib

import gin
import tf_keras as keras

from detlab.backbones import BACKBONES
from detlab.backbones.contract import features_model
from detlab.heads.classification import HEAD_SPECS, HeadSpec

NAME = "small_test_convnet"


@gin.register(module="tests.e2e")
def small_test_convnet(input_shape=(None, None, 3), sync_bn: bool = False,
                       **_) -> keras.Model:
  """Stem + two 3x3 conv-BN-ReLU per level -> levels 2..5 (16/32/48/64 channels)."""
  def conv_bn_relu(x, filters, strides, name):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                            name=name)(x)
    x = keras.layers.BatchNormalization(momentum=0.9, synchronized=sync_bn,
                                        name=name + "_bn")(x)
    return keras.layers.ReLU(name=name + "_relu")(x)

  inputs = keras.Input(shape=input_shape)
  x, endpoints = conv_bn_relu(inputs, 16, 2, "stem"), {}
  for level, channels in zip(range(2, 6), (16, 32, 48, 64)):
    x = conv_bn_relu(x, channels, 2, f"conv{level}a")
    x = conv_bn_relu(x, channels, 1, f"conv{level}b")
    endpoints[str(level)] = x
  return features_model(inputs, endpoints, 2, 5, name=NAME)


def register() -> None:
  """Makes the net known to the classifier (`classifier.backbone_fn = @small_test_convnet`);
  the segmenter and the joint model take the builder itself and need no table."""
  BACKBONES[NAME] = small_test_convnet
  HEAD_SPECS[NAME] = HeadSpec(dropout=0.0)


@contextlib.contextmanager
def registered():
  """The net registered for a block, then taken out of the tables (other tests in the same
  process walk BACKBONES)."""
  register()
  try:
    yield
  finally:
    BACKBONES.pop(NAME, None)
    HEAD_SPECS.pop(NAME, None)


register()  # on import: the gin binding `import tests.e2e.learning_backbone` is all it takes
