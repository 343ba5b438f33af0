"""A layer model's output and gradients for one fixed upstream gradient (tests/layers)."""
import tensorflow as tf


@tf.function
def values_and_gradients(model, x):
  """[output, d/d x, d/d each trainable variable] of a training pass, for a fixed random
  upstream gradient (in the output's dtype)."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = model(x, training=True)
  upstream = tf.random.stateless_normal(tf.shape(y), seed=[5, 6])
  return [y] + tape.gradient(y, [x] + model.trainable_variables,
                             output_gradients=tf.cast(upstream, y.dtype))
