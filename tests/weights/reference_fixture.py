"""Where the google/automl D0 oracle lives: ../shared/reference beside the repository, or
$DETLAB_REFERENCE_DIR. Every test that reads it goes through `automl_d0_dir()`.

When it is absent the tests skip, with that reason -- except under CI=true (what CI services
set), where a missing oracle is an error: the comparison with the reference must run in CI,
and a skip there goes unnoticed."""
import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ENV = "DETLAB_REFERENCE_DIR"


def running_in_ci() -> bool:
  """True when the environment says CI (CI=true, as GitHub Actions, GitLab and others set)."""
  return os.environ.get("CI", "").strip().lower() in ("true", "1")


def automl_d0_dir() -> str:
  """The fixture directory (model.index/data, reference_outputs.npz, manifest.json); when it
  is missing: pytest.fail under CI=true, else pytest.skip -- both saying where it looked."""
  from_env = os.environ.get(_ENV)
  root = from_env or os.path.join(_REPO, "..", "shared", "reference")
  path = os.path.normpath(os.path.join(root, "automl_efficientdet_d0"))
  if os.path.exists(os.path.join(path, "model.index")):
    return path
  where = f"${_ENV}={from_env}" if from_env else f"../shared/reference (${_ENV} unset)"
  message = (f"google/automl D0 reference checkpoint not found: no model.index in {path} "
             f"(looked in {where}). Put the automl_efficientdet_d0/ directory (model.index, "
             f"model.data-*, reference_outputs.npz, manifest.json) there, or set {_ENV} to "
             "the directory that holds it.")
  if running_in_ci():
    pytest.fail(f"{message} CI=true: the reference oracle must run in CI, so this is an "
                "error, not a skip (unset CI to skip locally).", pytrace=False)
  pytest.skip(message)
