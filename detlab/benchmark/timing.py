"""Timing and counting shared by every benchmark mode: a median-of-calls timer, multiply-adds
from the TF profiler, an fp32 matmul peak, and a network's size and inference speed."""
import statistics
import time

import tensorflow as tf


def time_call(fn, min_seconds: float, warmup: int = 3, min_samples: int = 5) -> float:
  """Median seconds per call over at least `min_samples` timed calls and `min_seconds`, after
  `warmup` untimed calls (the first traces and optimises the graph and creates the oneDNN
  primitives; the others let the allocator and thread pools settle).

  A median of at least five per-call times, not a mean, so that a call slowed by another
  process cannot move the figure much. What remains is the machine: D0 at batch 8 is bound by
  memory traffic (activations of 100-200 MB per op), and with other processes on the machine
  its per-call CPU time varied 1.03-1.52 s with no trend after the first call (batch 1:
  151-171 ms), so compare figures from alternating runs, never one run against another
  machine's or another hour's.
  """
  for _ in range(warmup):
    fn()
  samples, start = [], time.perf_counter()
  while time.perf_counter() - start < min_seconds or len(samples) < min_samples:
    t0 = time.perf_counter()
    fn()
    samples.append(time.perf_counter() - t0)
  return statistics.median(samples)


def count_gmacs(model, image_size: int) -> float:
  """Multiply-adds (billions) at batch 1 = TF profiler float ops of the traced network / 2.

  The graph is frozen (variables -> constants, nested functions inlined) only when it calls
  nested functions, which the profiler does not descend into; otherwise the trace is profiled
  as it is: the same count (checked on D0 and D3) without the cost of copying every weight.
  """
  return count_gmacs_of(lambda x: model(x, training=False),
                        [tf.TensorSpec([1, image_size, image_size, 3], tf.float32)])


def count_gmacs_of(fn, input_signature) -> float:
  """count_gmacs of any `fn(*tensors)` traced at `input_signature` (TensorSpecs)."""
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import
  from detlab.layers.normalization import stock_inference_form
  with stock_inference_form():
    concrete = tf.function(fn).get_concrete_function(*input_signature)
  graph = concrete.graph
  if any(op.type in ("PartitionedCall", "StatefulPartitionedCall")
         for op in graph.get_operations()):
    graph = convert_to_constants.convert_variables_to_constants_v2(concrete).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
  return profile.total_float_ops / 2.0 / 1e9


def matmul_gflops(min_seconds: float, n: int = 2048) -> float:
  a = tf.random.normal([n, n])
  b = tf.random.normal([n, n])
  fn = tf.function(lambda: tf.matmul(a, b))
  seconds = time_call(lambda: fn().numpy(), min_seconds)
  return 2.0 * n ** 3 / seconds / 1e9


def measure_network(model, size: int, wanted, min_seconds: float) -> dict:
  """Parameters, multiply-adds, matmul peak and network-only images/s at batch 1 and 8."""
  out = {}
  if "params" in wanted:
    out["params"] = int(model.count_params())
  if "gmacs" in wanted:
    out["gmacs"] = count_gmacs(model, size)
  if "matmul_gflops" in wanted:
    out["matmul_gflops"] = matmul_gflops(min_seconds)
  network = tf.function(lambda x: model(x, training=False))
  for batch in (1, 8):
    key = f"infer_img_s_bs{batch}"
    if key in wanted:
      images = tf.random.normal([batch, size, size, 3])
      out[key] = batch / time_call(lambda: tf.nest.map_structure(
          lambda t: t.numpy(), network(images)), min_seconds)
  return out


def train_step_call(trainer, batch: dict):
  """A no-argument callable: one `Trainer.train_steps` call of one step on `batch` (repeated
  from memory), synchronised by reading the loss metric, as the training loop's log line does."""
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
  one = tf.constant(1)
  return lambda: (trainer.train_steps(iterator, one), trainer.metrics["total"].result().numpy())


def time_train_step(trainer, batch: dict, min_seconds: float) -> float:
  """Median seconds of one training step on `batch` (`train_step_call`)."""
  return time_call(train_step_call(trainer, batch), min_seconds)
