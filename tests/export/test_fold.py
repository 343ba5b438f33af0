"""Conv-BN folding: folded and unfolded models compute the same inference function."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.backbones.efficientnet import efficientnet_b0
from detlab.export.fold import count_batch_norms, fold_batch_norms
from detlab.layers import batch_norm
from detlab.models.efficientdet import efficientdet
from random_stats import randomize_batch_norms, randomize_biases  # pylint: disable=import-error


CONVS = {
    "conv2d": lambda bias: keras.layers.Conv2D(6, 3, padding="same", use_bias=bias),
    "conv2d_strided": lambda bias: keras.layers.Conv2D(6, 3, strides=2, padding="same",
                                                      use_bias=bias),
    "depthwise": lambda bias: keras.layers.DepthwiseConv2D(3, padding="same",
                                                           depth_multiplier=2, use_bias=bias),
    "separable": lambda bias: keras.layers.SeparableConv2D(6, 3, padding="same",
                                                           depth_multiplier=2, use_bias=bias),
}


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("kind", sorted(CONVS))
def test_each_conv_type_folds_into_an_equal_bn_free_model(kind, use_bias):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((9, 9, 4))
  x = CONVS[kind](use_bias)(inputs)
  outputs = keras.layers.Activation("swish")(batch_norm("bn")(x))
  model = keras.Model(inputs, outputs)
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)
  folded = fold_batch_norms(model)
  assert count_batch_norms(model) == 1 and count_batch_norms(folded) == 0
  images = tf.random.stateless_normal([3, 9, 9, 4], seed=[1, 2])
  expected = model(images, training=False).numpy()
  np.testing.assert_allclose(folded(images, training=False).numpy(), expected, atol=1e-5)
  # The folding is not a no-op: the BN really changes the output.
  assert np.abs(expected - tf.nn.swish(model.layers[1](images)).numpy()).max() > 0.05


def test_a_conv_output_read_twice_keeps_its_bn():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 1)(inputs)
  outputs = keras.layers.add([batch_norm("bn")(x), x])  # the raw conv output is read too
  model = keras.Model(inputs, outputs)
  randomize_batch_norms(model, seed=0)
  folded = fold_batch_norms(model)
  assert count_batch_norms(folded) == 1
  images = tf.random.stateless_normal([2, 8, 8, 3], seed=[3, 4])
  np.testing.assert_allclose(folded(images).numpy(), model(images, training=False).numpy(),
                             atol=1e-6)


def test_a_conv_with_an_activation_keeps_its_bn():
  inputs = keras.Input((8, 8, 3))
  model = keras.Model(inputs, batch_norm("bn")(keras.layers.Conv2D(4, 1, activation="relu")(
      inputs)))
  assert count_batch_norms(fold_batch_norms(model)) == 1


def test_other_models_are_refused_with_the_reason():
  class Custom(keras.Model):
    def call(self, x):
      return x
  with pytest.raises(TypeError, match="EfficientDet or a functional"):
    fold_batch_norms(Custom())


@pytest.fixture(scope="module")
def d0_pair():
  keras.utils.set_random_seed(0)
  model = efficientdet(efficientnet_b0, num_classes=3, image_size=128)
  randomize_batch_norms(model, seed=0)
  return model, fold_batch_norms(model)


def test_whole_d0_folds_to_the_same_outputs_without_batch_norm(d0_pair):
  model, folded = d0_pair
  assert count_batch_norms(model) > 100 and count_batch_norms(folded) == 0
  images = tf.random.stateless_uniform([2, 128, 128, 3], seed=[5, 6], minval=-2.0, maxval=2.0)
  expected = model(images, training=False)
  actual = folded(images, training=False)
  for head in range(2):
    for level in map(str, range(3, 8)):
      want, got = expected[head][level].numpy(), actual[head][level].numpy()
      np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"head {head} level {level}")


def test_folding_leaves_the_original_model_untouched(d0_pair):
  model, folded = d0_pair
  assert count_batch_norms(model) > 100
  assert model.class_net.convs[0] is not folded.class_net.convs[0]
  # Per-level folded tower convs: the shared conv became one conv per level.
  assert len({id(c) for c in folded.class_net.bns[0]}) == 5
