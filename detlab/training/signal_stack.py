"""Signal handlers that run on the interrupted thread's own stack, not its alternate stack.

CPython installs every Python-level handler (`signal.signal`) with SA_ONSTACK: the kernel writes
the signal frame onto the receiving thread's alternate signal stack (sigaltstack) if it has
one. Native libraries set and restore that stack behind Python's back. OpenVINO's CPU plugin
(2026.4) gives the thread that compiles a model an 11,824-byte alternate stack and puts the
previous one back when the model is released; released out of creation order (model A, then
model B: what garbage collection does), the thread is left with A's stack, already unmapped.
From then on the first handled signal that reaches the thread -- the SIGTERM a scheduler sends to
preempt a long-running job -- cannot be delivered: the process dies with SIGSEGV, before any
Python code runs and without a faulthandler trace (that handler uses the same stack).

`run_on_thread_stack(sig)` clears SA_ONSTACK from the handler now installed for `sig`, so its
frame goes on the normal thread stack, whatever any library did to the alternate one. Linux
only (glibc/musl `struct sigaction` layout); elsewhere it does nothing and says so.
"""
import ctypes
import sys

SA_ONSTACK = 0x08000000  # Linux, every architecture detlab runs on


class _SigAction(ctypes.Structure):
  """Linux libc's `struct sigaction`: handler, 1024-bit mask, flags, restorer."""
  _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * (1024 // 64)),
              ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


def _libc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL(None, use_errno=True)  # the process's own libc
  except OSError:
    return None


_LIBC = _libc()


def _action(sig: int) -> "_SigAction | None":
  action = _SigAction()
  if _LIBC is None or _LIBC.sigaction(sig, None, ctypes.byref(action)) != 0:
    return None
  return action


def on_alternate_stack(sig: int) -> bool | None:
  """Whether `sig`'s installed handler runs on the alternate stack (None: cannot tell)."""
  action = _action(sig)
  return None if action is None else bool(action.flags & SA_ONSTACK)


def run_on_thread_stack(sig: int) -> bool:
  """Clears SA_ONSTACK from the handler installed for `sig` (keeping the handler, mask and
  other flags); True when `sig`'s handler now runs on the thread's own stack."""
  action = _action(sig)
  if action is None:
    return False
  if action.flags & SA_ONSTACK:
    action.flags &= ~SA_ONSTACK
    if _LIBC.sigaction(sig, ctypes.byref(action), None) != 0:
      return False
  return on_alternate_stack(sig) is False
