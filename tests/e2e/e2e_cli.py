"""One way for the end-to-end tests to run a detlab command line: `python -m MODULE ARGS` as
a subprocess from the repo root (so a gin binding `import tests.e2e.learning_backbone` or
`import tests.training.tiny_backbone` finds its module), TF's start-up noise quiet."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs `python -m module args`; fails the test with the stderr tail unless it exits 0."""
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, f"python -m {module} failed:\n{result.stderr[-3000:]}"
  return result


def train(gin_file: str, model_dir, bindings: list) -> subprocess.CompletedProcess:
  """`python -m detlab.train --gin_file=... --model_dir=... --gin_bindings=...` (each)."""
  return run_module("detlab.train", f"--gin_file={gin_file}", f"--model_dir={model_dir}",
                    *[f"--gin_bindings={b}" for b in bindings])
