"""SIGTERM -> finish the current loop of steps, save a checkpoint, exit cleanly.

Cluster schedulers (Kubernetes, Slurm, preemptible VMs) send SIGTERM and kill the process a
grace period later (Kubernetes: 30 s by default). The handler only sets a flag; the training
loop checks it between loops of `Schedule.steps_per_loop` steps, so a loop must finish well
within the grace period. `python -m detlab.train` then exits with code 0
(`PREEMPTED_EXIT_CODE`) and the same command resumes from the saved step.

TF's `tf.distribute.experimental.PreemptionCheckpointHandler` does this for multi-worker and
TPU jobs but watches cloud-specific signals; this plain signal flag also works on one host.
"""
import signal
import threading

from absl import logging

PREEMPTED_EXIT_CODE = 0


class PreemptionWatcher:
  """`requested` turns True after SIGTERM; use as a context manager to (un)install."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = signals
    self._event = threading.Event()
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint after the current loop of "
                    "steps, then stopping.", signum)
    self._event.set()

  def __enter__(self) -> "PreemptionWatcher":
    if threading.current_thread() is threading.main_thread():  # signals need the main thread
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
