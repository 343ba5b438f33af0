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


def worker_seed(seed: int | None, input_context: tf.distribute.InputContext | None):
  """The run seed shifted per input pipeline, so each input worker draws other numbers."""
  if seed is not None and input_context is not None:
    return seed + 7919 * input_context.input_pipeline_id
  return seed


def with_example_seeds(dataset: tf.data.Dataset, seed: int | None) -> tf.data.Dataset:
  """(element, int64 [2] seed) pairs: the seeds come from a `tf.data.Dataset.random`, whose
  position the iterator checkpoint holds (unlike the state of random ops inside map
  functions), so a resumed run gives every example the draws it would have had."""
  return tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed=seed).batch(2)))
