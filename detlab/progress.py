"""A console progress line with rate and ETA, shared by training and the data tools."""
import sys
import time


def format_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
  """Tracks done/total units; `line()` gives 'done/total, rate, ETA'; `update()` prints it."""

  def __init__(self, total: int, unit: str = "it", start: int = 0, stream=sys.stderr,
               min_interval: float = 1.0):
    self.total, self.unit, self.stream = total, unit, stream
    self.start_count = self.done = start
    self.min_interval = min_interval
    self._t0 = self._last_print = time.monotonic()

  @property
  def rate(self) -> float:
    elapsed = time.monotonic() - self._t0
    return (self.done - self.start_count) / elapsed if elapsed > 0 else 0.0

  def line(self) -> str:
    rate = self.rate
    eta = (self.total - self.done) / rate if rate > 0 else float("nan")
    eta_text = format_duration(eta) if rate > 0 else "?"
    return (f"{self.done}/{self.total} {self.unit} ({100.0 * self.done / max(1, self.total):.0f}%)"
            f" {rate:.2f} {self.unit}/s ETA {eta_text}")

  def update(self, done: int, prefix: str = "", suffix: str = "", force: bool = False) -> None:
    self.done = done
    now = time.monotonic()
    if force or done >= self.total or now - self._last_print >= self.min_interval:
      self._last_print = now
      print(f"{prefix}{self.line()}{suffix}", file=self.stream, flush=True)
