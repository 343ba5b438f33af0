"""TF-slim nets (the `tf-slim` package) built with seeded random weights in a TF1-compat graph;
their checkpoint and logits are the oracle for detlab's slim import.

TF 2.20 / tf_keras 2.20: `slim.batch_norm` fails with
  ModuleNotFoundError: No module named 'tf_keras.legacy_tf_layers'
raised by tensorflow/python/layers/normalization.py, which lazy-loads
`tf_keras.legacy_tf_layers.normalization`; tf_keras 2.20 ships that module as
`tf_keras.src.legacy_tf_layers.normalization`. Aliasing the module name (below) is enough.
"""
import sys

import numpy as np
import tensorflow as tf


def _alias_tf_keras_legacy_layers() -> None:
  import tf_keras.src.legacy_tf_layers as legacy  # pylint: disable=import-outside-toplevel
  import tf_keras.src.legacy_tf_layers.normalization as normalization  # pylint: disable=import-outside-toplevel
  sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
  sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", normalization)


def slim_logits_and_checkpoint(net: str, images: np.ndarray, prefix: str,
                               num_classes: int = 1001, seed: int = 0) -> np.ndarray:
  """Builds tf_slim.nets.inception.<net> (inference mode, no aux head), gives every variable
  seeded random values (slim's initializers for kernels; BN beta/moving statistics and biases
  random too), saves the checkpoint at `prefix` and returns the logits for `images`
  ([B, S, S, 3] float32, already normalized)."""
  _alias_tf_keras_legacy_layers()
  import tf_slim as slim  # pylint: disable=import-outside-toplevel
  from tf_slim.nets import inception  # pylint: disable=import-outside-toplevel
  build = getattr(inception, net)
  arg_scope = getattr(inception, net + "_arg_scope")
  rng = np.random.default_rng(seed)
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.set_random_seed(seed)
    x = tf.compat.v1.placeholder(tf.float32, images.shape)
    kwargs = {"create_aux_logits": False} if net == "inception_v3" else {}
    with slim.arg_scope(arg_scope()):
      logits, _ = build(x, num_classes=num_classes, is_training=False, **kwargs)
    variables = tf.compat.v1.global_variables()
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for v in variables:
        name, shape = v.op.name, v.shape.as_list()
        if "moving_variance" in name:
          value = rng.uniform(0.5, 2.0, shape)
        elif "moving_mean" in name or name.endswith(("beta", "biases")):
          value = rng.normal(0.0, 0.2, shape)
        elif name.endswith("gamma"):
          value = rng.uniform(0.5, 1.5, shape)
        elif "/Logits/" in name and name.endswith("weights"):
          value = rng.normal(0.0, 0.01, shape)  # logits O(1), so 1e-4 means ~1e-5 relative
        else:
          continue
        v.load(value.astype(np.float32), session)
      tf.compat.v1.train.Saver(variables).save(session, prefix)
      return session.run(logits, {x: images})
