"""Per-example randomness: one stateless seed per example, split into one seed per random draw.

The input pipelines hand each training example a seed derived from (run seed, example index)
(`tf.data.Dataset.random(seed)` zipped with the records), so the same example gets the same
crop/flip/scale however often the run stops and resumes. A parser called without one (tests,
ad-hoc use) draws a fresh seed instead.
"""
import tensorflow as tf


def example_seeds(seed: tf.Tensor | None, count: int) -> list[tf.Tensor]:
  """`count` independent stateless seeds (each int64 [2]) from an example's `seed` (or from a
  fresh random one when it is None)."""
  if seed is None:
    seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
  return tf.unstack(tf.random.experimental.stateless_split(seed, count))
