"""Source ids as fixed-length int32 byte codes, for training batches that go to accelerators.

Training batches carry each image's source_id so that the NaN guard can name the batch that
broke a step. Strings cannot go to a TPU (nor be copied to a GPU by a distributed iterator),
so the training pipeline encodes each id into SOURCE_ID_BYTES int32 values (the UTF-8 bytes,
zero-padded or truncated) and the host decodes the codes of the offending batch. Evaluation
batches keep string ids: they stay on the host.
"""
import numpy as np
import tensorflow as tf

SOURCE_ID_BYTES = 64


def encode_source_id(source_id: tf.Tensor) -> tf.Tensor:
  """A string scalar (or [n] strings) → int32 [SOURCE_ID_BYTES] (or [n, SOURCE_ID_BYTES])."""
  codes = tf.io.decode_raw(source_id, tf.uint8, fixed_length=SOURCE_ID_BYTES)
  return tf.cast(codes, tf.int32)


def decode_source_ids(codes) -> list[str]:
  """int32 [n, SOURCE_ID_BYTES] codes → the n ids. An id that fills all SOURCE_ID_BYTES ends
  with '…': it may have been cut (the codes cannot tell a 64-byte id from a longer one)."""
  codes = np.asarray(codes).reshape(-1, SOURCE_ID_BYTES)
  ids = []
  for row in codes:
    text = bytes(row.astype(np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")
    ids.append(text + "…" if row[-1] else text)
  return ids
