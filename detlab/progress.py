"""A console progress line with rate and ETA, shared by training and the data tools."""
import sys
import time


def format_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
  """Tracks done/total units; `line()` gives 'done/total, rate, ETA'; `update()` prints it.

  The rate is measured over the interval since the previous printed update, so one-off costs
  (graph tracing, the first batches) stop counting once they are past.
  """

  def __init__(self, total: int, unit: str = "it", start: int = 0, stream=sys.stderr,
               min_interval: float = 1.0):
    self.total, self.unit, self.stream = total, unit, stream
    self.done = start
    self.min_interval = min_interval
    self._last_print = time.monotonic()
    self._mark = (self._last_print, start)
    self.rate = 0.0

  def _measure(self, done: int) -> None:
    now = time.monotonic()
    mark_time, mark_done = self._mark
    if now > mark_time and done > mark_done:
      self.rate = (done - mark_done) / (now - mark_time)
    self.done = done

  def line(self) -> str:
    rate = self.rate
    eta = (self.total - self.done) / rate if rate > 0 else float("nan")
    eta_text = format_duration(eta) if rate > 0 else "?"
    return (f"{self.done}/{self.total} {self.unit} ({100.0 * self.done / max(1, self.total):.0f}%)"
            f" {rate:.2f} {self.unit}/s ETA {eta_text}")

  def update(self, done: int, prefix: str = "", suffix="", force: bool = False) -> None:
    """Prints when due; `suffix` may be a callable of this Progress (to use the new rate)."""
    now = time.monotonic()
    if force or done >= self.total or now - self._last_print >= self.min_interval:
      self._measure(done)
      self._last_print = now
      self._mark = (now, done)
      text = suffix(self) if callable(suffix) else suffix
      print(f"{prefix}{self.line()}{text}", file=self.stream, flush=True)
    else:
      self.done = done
