"""SIGTERM during an evaluation -- periodic, final, or `--continuous` (evaluating or waiting for
a checkpoint) -- stops it at the next batch, writes no metrics, keeps the checkpoint of that
step and reports the run as preempted (exit code 42 in detlab.train); the same command then
finishes the job.

These tests send a real SIGTERM to their own process. In full runs that signal used to kill
the process with SIGSEGV once tests/export/test_openvino.py had run in it: OpenVINO leaves
the main thread's alternate signal stack unmapped when compiled models are released out of
creation order, and CPython delivers its handlers on that stack. PreemptionWatcher now runs
its handler on the thread's own stack (training/signal_stack.py); the periodic case below
recreates OpenVINO's state first, so it fails here, in-process, if that protection goes."""
import ctypes
import os
import signal
import threading
import time

import pytest
import tensorflow as tf

from detlab.evaluation.detection import DetectionEvaluator
from detlab.training.preemption import handler_installed
from detlab.training.signal_stack import run_on_thread_stack
from openvino_state import release_two_openvino_models  # pylint: disable=import-error

# How long a case waits for train() to install its SIGTERM handler before it fails: train()
# does that before it builds anything, so this only bounds a loaded machine's delay.
HANDLER_WAIT_S = 120.0


@pytest.fixture(autouse=True)
def stray_sigterms():
  """While a case runs, SIGTERM outside detlab's handler is recorded, not fatal: a signal
  that missed the handler fails the case instead of killing this pytest process."""
  stray = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: stray.append(signum))
  run_on_thread_stack(signal.SIGTERM)  # as detlab's own handler: OpenVINO's dangling stack
  try:
    yield stray
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not stray, "SIGTERM arrived while detlab's handler was not installed"


class _Stack(ctypes.Structure):
  _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


@pytest.fixture
def dangling_signal_stack():
  """This thread's alternate signal stack as OpenVINO leaves it after two compiled models are
  released in creation order: memory the kernel cannot write (made by hand where OpenVINO is
  missing or no longer does it). Put back afterwards."""
  libc = ctypes.CDLL(None, use_errno=True)
  saved, now = _Stack(), _Stack()
  libc.sigaltstack(None, ctypes.byref(saved))
  try:
    release_two_openvino_models()
  except ImportError:
    pass
  libc.sigaltstack(None, ctypes.byref(now))
  by_hand = None
  if not now.sp or _mapped(now.sp):
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    by_hand = libc.mmap(None, 65536, 0, 0x22, -1, 0)  # PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS
    assert libc.sigaltstack(ctypes.byref(_Stack(by_hand, 0, 65536)), None) == 0
  try:
    yield
  finally:
    libc.sigaltstack(ctypes.byref(saved), None)
    if by_hand:
      libc.munmap(ctypes.c_void_p(by_hand), ctypes.c_size_t(65536))


def _mapped(address: int) -> bool:
  with open("/proc/self/maps", encoding="ascii") as maps:
    for line in maps:
      start, end = (int(bound, 16) for bound in line.split()[0].split("-"))
      if start <= address < end:
        return True
  return False


def _sigterm_at_first_detection(monkeypatch):
  """A real SIGTERM to this process when the evaluation has its first batch's detections
  (inside train(), so after it installed its handler; checked, to fail clearly if not)."""
  update = DetectionEvaluator.update
  calls = []

  def signal_then_update(self, batch, outputs):
    calls.append(1)
    if len(calls) == 1:
      assert handler_installed(), "evaluation ran without detlab's SIGTERM handler"
      os.kill(os.getpid(), signal.SIGTERM)
    return update(self, batch, outputs)

  monkeypatch.setattr(DetectionEvaluator, "update", signal_then_update)
  return calls


def _sigterm_once_the_handler_is_installed() -> threading.Event:
  """Starts a thread that sends SIGTERM to this process as soon as detlab's handler is in
  place (polled every 10 ms, for at most HANDLER_WAIT_S); the event is set once it is sent."""
  sent = threading.Event()

  def wait_then_signal():
    deadline = time.monotonic() + HANDLER_WAIT_S
    while time.monotonic() < deadline:
      if handler_installed():
        os.kill(os.getpid(), signal.SIGTERM)
        sent.set()
        return
      time.sleep(0.01)

  threading.Thread(target=wait_then_signal, daemon=True).start()
  return sent


def test_sigterm_in_a_periodic_evaluation_saves_that_step_and_stops(
    run_train, tmp_path, monkeypatch, dangling_signal_stack):
  # Without PreemptionWatcher's protection this process dies here with SIGSEGV (exit 139).
  calls = _sigterm_at_first_detection(monkeypatch)
  results = run_train(tmp_path, "train_and_eval", "Schedule.eval_every_steps = 2")
  assert results["preempted"] and calls  # the evaluation of step 2 was under way
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")  # not trained on to 6
  assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "best").exists()


def test_sigterm_in_the_final_or_a_continuous_evaluation_and_a_rerun_finishes(
    run_train, tmp_path, monkeypatch):
  _sigterm_at_first_detection(monkeypatch)
  results = run_train(tmp_path, "train_and_eval", "Schedule.train_steps = 2")
  assert results["preempted"] and "metrics" not in results
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
  assert not (tmp_path / "metrics.json").exists()
  # A --continuous sidecar on the same checkpoint, stopped the same way.
  _sigterm_at_first_detection(monkeypatch)
  results = run_train(tmp_path, "eval", "Schedule.train_steps = 2", continuous=True,
                      eval_timeout_s=600.0)
  assert results["preempted"] and "metrics" not in results
  assert not (tmp_path / "eval" / "metrics.json").exists()
  monkeypatch.undo()
  again = run_train(tmp_path, "train_and_eval", "Schedule.train_steps = 2")
  assert not again["preempted"] and "AP" in again["metrics"]
  assert (tmp_path / "metrics.json").exists()


def test_sigterm_while_waiting_for_a_checkpoint_stops_the_continuous_evaluation(
    run_train, tmp_path):
  # No checkpoint will ever come; without the stop this would wait the whole timeout (longer
  # than HANDLER_WAIT_S, so a handler that never came fails on `sent`, not on the wait).
  sent = _sigterm_once_the_handler_is_installed()
  start = time.monotonic()
  results = run_train(tmp_path, "eval", continuous=True, eval_timeout_s=2 * HANDLER_WAIT_S)
  waited = time.monotonic() - start
  assert sent.is_set(), f"detlab's SIGTERM handler was not installed within {HANDLER_WAIT_S} s"
  assert results["preempted"] and "metrics" not in results
  assert waited < 2 * HANDLER_WAIT_S, waited  # stopped by the signal, not by the timeout
