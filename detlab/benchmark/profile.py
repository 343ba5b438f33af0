"""Op-level time of a traced function from a TensorFlow profiler trace (`--profile`).

The trace's executor lines hold one event per kernel run, named `node_name:OpType`, as the
graph actually ran: after grappler and the oneDNN rewrites (`_MklNativeFusedConv2D`,
`_MklFusedDepthwiseConv2dNative`, ...), so a fusion that did or did not happen shows here by
its op type. Kernels of one step can run side by side on the inter-op pool, so the shares are
of the summed kernel time, not of the wall time.
"""
import collections
import dataclasses
import glob
import os
import tempfile

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class OpTime:
  """One row of the profile: an op type (or node), its milliseconds per call and share."""
  name: str
  ms: float
  count: float  # kernel runs per call
  share: float


def _kernel_events(logdir: str):
  """(node name, op type, microseconds) of every kernel event in the trace under `logdir`."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-direct-tensorflow-import
  paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
  for path in paths:
    space = xplane_pb2.XSpace()
    with tf.io.gfile.GFile(path, "rb") as f:
      space.ParseFromString(f.read())
    for plane in space.planes:
      if not plane.name.startswith("/host:CPU") and "device:" not in plane.name:
        continue
      for line in plane.lines:
        if line.name == "python":
          continue
        for event in line.events:
          name = plane.event_metadata[event.metadata_id].name
          node, sep, op_type = name.rpartition(":")
          if not sep or not node or " " in op_type or "::" in name:
            continue
          yield node, op_type, event.duration_ps / 1e6


def profile_ops(fn, calls: int = 3, warmup: int = 2, by: str = "op") -> list[OpTime]:
  """Kernel time per call of `fn` (a no-argument callable that runs a traced function and
  waits for its result), summed by op type (`by="op"`) or by node name (`by="node"`),
  largest first. `warmup` untraced calls first (tracing, oneDNN primitive creation)."""
  if by not in ("op", "node"):
    raise ValueError(f"by must be 'op' or 'node', got {by!r}.")
  for _ in range(warmup):
    fn()
  logdir = tempfile.mkdtemp(prefix="detlab_profile_")
  tf.profiler.experimental.start(logdir)
  try:
    for _ in range(calls):
      fn()
  finally:
    tf.profiler.experimental.stop()
  totals, counts = collections.Counter(), collections.Counter()
  for node, op_type, micros in _kernel_events(logdir):
    if op_type in ("ReadVariableOp", "_Retval", "_Arg", "NoOp", "Identity", "Const"):
      continue  # bookkeeping, not compute
    key = op_type if by == "op" else f"{node} ({op_type})"
    totals[key] += micros
    counts[key] += 1
  tf.io.gfile.rmtree(logdir)
  whole = sum(totals.values()) or 1.0
  return [OpTime(name, micros / calls / 1000.0, counts[name] / calls, micros / whole)
          for name, micros in totals.most_common()]


def format_profile(title: str, rows: list[OpTime], top: int = 10) -> str:
  """`title`, then the `top` rows as `ms  share  runs  name` and the total of all rows."""
  lines = [title, f"  {'ms/call':>9} {'share':>6} {'runs':>6}  op"]
  for row in rows[:top]:
    lines.append(f"  {row.ms:9.1f} {100 * row.share:5.1f}% {row.count:6.0f}  {row.name}")
  lines.append(f"  {sum(r.ms for r in rows):9.1f} 100.0% {sum(r.count for r in rows):6.0f}  "
               "(all kernels)")
  return "\n".join(lines)
