"""SIGTERM reaches detlab's preemption handler even when a native library left the thread's
alternate signal stack dangling (training/signal_stack.py).

Each case runs in a child process, because without the fix the signal kills the process with
SIGSEGV: that is the "native crash on SIGTERM" which used to take down a full test run in
test_preemption_eval once tests/export/test_openvino.py had run in the same process.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The state OpenVINO leaves behind, made by hand: the main thread's alternate signal stack is
# memory the kernel cannot write. (Made inaccessible rather than unmapped, so that no later
# allocation can map that address again and hide the fault.)
DANGLING_BY_HAND = """
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
class Stack(ctypes.Structure):
  _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]
size = 64 * 1024
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
assert libc.sigaltstack(ctypes.byref(Stack(address, 0, size)), None) == 0
assert libc.mprotect(address, size, 0) == 0  # PROT_NONE
"""

# The same state through OpenVINO itself: two compiled models released in creation order.
DANGLING_BY_OPENVINO = """
import sys
sys.path.insert(0, "tests/training")
from openvino_state import release_two_openvino_models
release_two_openvino_models()
"""

SIGTERM_TO_PLAIN = """
import os, signal
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # CPython: SA_ONSTACK
os.kill(os.getpid(), signal.SIGTERM)
print("requested", bool(got), flush=True)
"""
SIGTERM_TO_DETLAB = """
import os, signal
from detlab.training.preemption import PreemptionWatcher
with PreemptionWatcher() as watcher:  # installs its handler off the alternate stack
  os.kill(os.getpid(), signal.SIGTERM)
  print("requested", watcher.requested, flush=True)
"""


def _run(*parts: str) -> subprocess.CompletedProcess:
  script = "\n".join(textwrap.dedent(part) for part in parts)
  return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=ROOT, timeout=300, check=False)


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="sigaltstack/sigaction layout checked on Linux only")


def test_a_dangling_alternate_stack_kills_a_plain_python_handler_but_not_detlabs():
  unfixed = _run(DANGLING_BY_HAND, SIGTERM_TO_PLAIN)
  assert unfixed.returncode == -signal.SIGSEGV, (unfixed.returncode, unfixed.stderr[-2000:])
  fixed = _run(DANGLING_BY_HAND, SIGTERM_TO_DETLAB)
  assert fixed.returncode == 0, fixed.stderr[-2000:]
  assert "requested True" in fixed.stdout, fixed.stdout


def test_sigterm_after_openvino_models_were_released_reaches_detlabs_handler():
  pytest.importorskip("openvino")
  fixed = _run(DANGLING_BY_OPENVINO, SIGTERM_TO_DETLAB)
  assert fixed.returncode == 0, (fixed.returncode, fixed.stderr[-2000:])
  assert "requested True" in fixed.stdout, fixed.stdout


def test_only_the_stack_changes_the_python_handler_still_runs():
  from detlab.training.signal_stack import on_alternate_stack, run_on_thread_stack  # pylint: disable=import-outside-toplevel
  got = []
  previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
  try:
    assert on_alternate_stack(signal.SIGUSR1)  # CPython's default for its handlers
    assert run_on_thread_stack(signal.SIGUSR1)
    assert on_alternate_stack(signal.SIGUSR1) is False
    os.kill(os.getpid(), signal.SIGUSR1)
    assert got == [signal.SIGUSR1]  # same Python handler, only the stack changed
  finally:
    signal.signal(signal.SIGUSR1, previous)


def test_the_handler_a_watcher_restores_runs_on_the_thread_stack_too():
  """A signal that comes after the watcher is gone reaches the handler it restored, which
  signal.signal would have put back on the (possibly dangling) alternate stack."""
  from detlab.training.preemption import PreemptionWatcher  # pylint: disable=import-outside-toplevel
  from detlab.training.signal_stack import on_alternate_stack  # pylint: disable=import-outside-toplevel
  got = []
  previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
  try:
    with PreemptionWatcher(signals=(signal.SIGUSR1,)):
      assert on_alternate_stack(signal.SIGUSR1) is False
    assert on_alternate_stack(signal.SIGUSR1) is False
    os.kill(os.getpid(), signal.SIGUSR1)
    assert got == [signal.SIGUSR1]  # the restored handler, on the thread's stack
  finally:
    signal.signal(signal.SIGUSR1, previous)
