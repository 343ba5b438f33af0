"""Run by test_distribution.py as one of two worker processes (TF_CONFIG in the environment)
or as the single-process reference (`--single`): 2 steps of a tiny detector at global batch
4, then the weights and EMA shadows are saved to an .npz file named on the command line.

Each worker feeds its own half of the global batch (distribute_datasets_from_function,
split by input_pipeline_id), as a real multi-worker input pipeline does.
"""
import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from replica_training import GLOBAL_BATCH, global_batch, train  # noqa: E402  pylint: disable=import-error


def _worker_slices(batch):
  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
    start = context.input_pipeline_id * per_replica
    part = {k: v[start:start + per_replica] for k, v in batch.items()}
    return tf.data.Dataset.from_tensors(part).repeat()
  return lambda strategy: strategy.distribute_datasets_from_function(dataset_fn)


def main(output: str, single: bool) -> None:
  # The collective strategy must exist before other TF work in the process.
  strategy = (tf.distribute.get_strategy() if single
              else tf.distribute.MultiWorkerMirroredStrategy())
  if not single:
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
  batch = global_batch()
  weights, shadows, loss, initial = train(strategy, _worker_slices(batch))
  arrays = {f"weight_{i}": w for i, w in enumerate(weights)}
  arrays.update({f"ema_{i}": s for i, s in enumerate(shadows)})
  arrays.update({f"initial_{i}": w for i, w in enumerate(initial)})
  np.savez(output, loss=np.float64(loss), **arrays)
  print(f"saved {output}: loss {loss:.7f}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], single="--single" in sys.argv[2:])
