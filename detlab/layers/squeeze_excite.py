"""The squeeze of a squeeze-and-excitation block (Hu et al. 2018), with a training gradient
that adds the squeeze's share into the excitation's in one pass.

In SE, the block's input x feeds both the squeeze (the spatial mean) and the excitation (x *
gate). Autodiff gives x two gradients and sums them: the mean's gradient is materialised as a
full-size Tile of the upstream [N, C] gradient, divided by H*W in another full-size pass, and
added to the excitation's gradient by an AddN: three passes over an activation-sized tensor
per block on top of the one the excitation's gradient needs. `SqueezeWithInput` returns the
mean together with x itself, and in a training pass their joint gradient is the excitation's
plus the [N, 1, 1, C] mean gradient / (H*W) broadcast in one Add. D0 training step at batch 8
on a 2-core CPU: EfficientNet-B0's 16 SE blocks, ~4-25 % less time each in a forward and
backward pass (the large early ones gain most). The values are the stock ones. In inference
with oneDNN (outside `normalization.portable_forms()`, so not in exports) the mean is a
full-window AvgPool, oneDNN's pooling kernel, where TF's Mean is Eigen's reduction (1.2-3x
faster at EfficientNet-B0's shapes at batch 8, the same at batch 1).
"""
import tensorflow as tf
import tf_keras as keras

from detlab.layers import normalization
from detlab.layers.normalization import call_training


def _mean_with_input(x):
  """(x, spatial mean of x) whose gradient is one broadcast Add (module docstring)."""
  scale = 1.0 / (x.shape[1] * x.shape[2])

  @tf.custom_gradient
  def mean_with_input(inputs):
    def gradient(d_inputs, d_mean):
      return d_inputs + d_mean[:, tf.newaxis, tf.newaxis, :] * tf.cast(scale, d_mean.dtype)
    return (tf.identity(inputs), tf.reduce_mean(inputs, axis=[1, 2])), gradient

  return mean_with_input(x)


@keras.saving.register_keras_serializable(package="detlab")
class SqueezeWithInput(keras.layers.Layer):
  """[x, mean of x over H and W]: an SE block's squeeze ([N, C]) and the tensor its
  excitation multiplies (module docstring). Channels-last input."""

  def call(self, inputs):
    static = (inputs.shape.rank == 4 and inputs.shape[1] is not None
              and inputs.shape[2] is not None and normalization.rewrites_allowed())
    if static and call_training():
      return list(_mean_with_input(inputs))
    if static and normalization.onednn_only_forms_allowed():
      window = inputs.shape[1:3]
      mean = tf.nn.avg_pool2d(inputs, window, window, "VALID")
      return [inputs, tf.reshape(mean, [-1, inputs.shape[3]])]
    return [inputs, tf.reduce_mean(inputs, axis=[1, 2])]

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    return [input_shape, tf.TensorShape([input_shape[0], input_shape[3]])]
