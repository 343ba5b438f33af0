"""Local response normalization across channels (AlexNet / GoogLeNet)."""
import tensorflow as tf
import tf_keras as keras


class LocalResponseNormalization(keras.layers.Layer):
  """x / (bias + alpha/size * sum_{size neighbouring channels} x^2) ** beta.

  Parameters in the Caffe convention of the papers (`alpha` is divided by `size`); GoogLeNet
  uses size 5, alpha 1e-4, beta 0.75. No weights. Input and output: [B, H, W, C].
  """

  def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
               bias: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    self.size, self.alpha, self.beta, self.bias = size, alpha, beta, bias

  def call(self, inputs):
    # tf.nn.lrn sums over depth_radius channels either side and does not divide alpha.
    return tf.nn.local_response_normalization(inputs, depth_radius=self.size // 2,
                                              bias=self.bias, alpha=self.alpha / self.size,
                                              beta=self.beta)

  def get_config(self) -> dict:
    return {**super().get_config(), "size": self.size, "alpha": self.alpha,
            "beta": self.beta, "bias": self.bias}
