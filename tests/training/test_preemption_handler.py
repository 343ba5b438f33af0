"""PreemptionWatcher's signal handler only records the signal (issue 23 item 10: a handler
that logs or takes a lock breaks when a second signal arrives while it runs)."""
import os
import signal

from detlab.training import preemption


def test_the_sigterm_handler_only_records_the_signal_and_the_poll_logs_it(monkeypatch):
  # Python runs a handler between any two bytecodes of the main thread, nested when a second
  # signal comes while it runs: logging there re-enters a half-done stream write, and
  # threading.Event.set() nested in itself deadlocks. The message comes from the poll instead.
  logged = []
  monkeypatch.setattr(preemption.logging, "warning", lambda *args: logged.append(args))
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGTERM)  # handled before kill() returns to Python code
    os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing
    assert not logged, "the handler logged"
    assert watcher.requested and watcher.requested
  assert len(logged) == 1 and logged[0][1] == signal.SIGTERM, logged
  assert not preemption.handler_installed()
