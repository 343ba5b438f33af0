"""SIGTERM -> stop at the next safe point, save a checkpoint, exit with a distinct code.

Cluster schedulers (Kubernetes, Slurm, preemptible VMs) send SIGTERM and kill the process a
grace period later (Kubernetes: 30 s by default). The handler only sets a flag. Training
checks it between loops of `Schedule.steps_per_loop` steps, and every evaluation (periodic,
final, `--continuous`, also while it waits for a checkpoint) before each batch; a stopped
evaluation writes nothing. So the time from SIGTERM to the saved checkpoint is bounded by one
loop of steps, or one eval batch, plus the save: size `steps_per_loop` to fit the grace
period. `python -m detlab.train` then exits with `PREEMPTED_EXIT_CODE` (42, the code TF's own
preemption handling exits with), distinct from success (0) and failure (1), so a scheduler
reschedules the job, and the same command resumes from the saved step.

Multi-worker jobs: a scheduler signals one host at a time, so the flag is only this process's
wish; after every loop (and every periodic evaluation) the workers agree on it with one
all-reduce (`Trainer.stop_agreed`): when any of them got SIGTERM, all of them save the same
step and exit with 42, the chief into model_dir. TF's
`tf.distribute.experimental.PreemptionCheckpointHandler` would agree as well, but it wraps
every step and owns the save and the exit (see `stop_agreed`).
"""
import signal
import threading

from absl import logging

from detlab.training.signal_stack import run_on_thread_stack

PREEMPTED_EXIT_CODE = 42


class PreemptionWatcher:
  """`requested` turns True after SIGTERM; use as a context manager to (un)install."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = signals
    self._signal = None  # the first signal received; written by the handler only
    self._reported = False
    self._previous = {}

  @property
  def requested(self) -> bool:
    """Polled from the main thread; logs the request the first time it sees it."""
    if self._signal is not None and not self._reported:
      self._reported = True
      logging.warning("Received signal %d: stopping at the end of the current loop of steps "
                      "or eval batch, saving a checkpoint, exiting with code %d.",
                      self._signal, PREEMPTED_EXIT_CODE)
    return self._signal is not None

  def _handle(self, signum, frame):
    # Python runs this between any two bytecodes of the main thread -- inside a logging call,
    # a lock's critical section, a checkpoint save -- and runs it again, nested, when another
    # signal comes meanwhile (schedulers send SIGTERM to every process of a job, some twice).
    # So it only stores the number: no logging (re-entering a stream write raises), no lock
    # (threading.Event.set() nested in itself deadlocks), nothing that can raise.
    del frame
    if self._signal is None:
      self._signal = signum

  def __enter__(self) -> "PreemptionWatcher":
    if threading.current_thread() is threading.main_thread():  # signals need the main thread
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
        run_on_thread_stack(sig)  # not on an alternate stack a native library left dangling
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
      # signal.signal sets SA_ONSTACK again: a restored Python handler must not meet the
      # dangling alternate stack either (a late signal arrives after this watcher is gone).
      run_on_thread_stack(sig)
    self._previous.clear()


def handler_installed(sig: int = signal.SIGTERM) -> bool:
  """True while a PreemptionWatcher handles `sig` in this process. A test that signals its own
  process waits for this first: sent earlier, SIGTERM takes its default action (exit)."""
  return isinstance(getattr(signal.getsignal(sig), "__self__", None), PreemptionWatcher)
