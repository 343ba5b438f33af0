"""The SIGTERM-during-evaluation cases (sigterm_eval_cases.py) in a fresh pytest process.

Those tests deliver a real SIGTERM to the process that runs them. In full-suite runs that
signal, arriving in a process which had already built and run hundreds of models (and loaded
LiteRT and OpenVINO), twice killed the process natively -- a SIGSEGV of the single pytest
process, and an xdist worker that died and left the run hanging -- while the same file always
passed on its own. The cause is not found; running the cases in their own interpreter keeps
what they assert and keeps the rest of the suite out of their way.
"""
import os
import re
import subprocess
import sys

CASES = os.path.join(os.path.dirname(__file__), "sigterm_eval_cases.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_in_every_kind_of_evaluation_in_a_fresh_process(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
  result = subprocess.run(
      [sys.executable, "-m", "pytest", CASES, "-q", "-p", "no:cacheprovider",
       f"--basetemp={tmp_path / 'basetemp'}", f"--rootdir={ROOT}"],
      capture_output=True, text=True, env=env, timeout=900,
      cwd=ROOT)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-4000:]
  assert re.search(r"\b3 passed\b", output), output[-4000:]  # every case ran, none skipped
