"""Where the google/automl D0 oracle lives: ../shared/reference beside the repository, or
$DETLAB_REFERENCE_DIR. Tests skip (with that reason) when it is absent."""
import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def automl_d0_dir() -> str:
  """The fixture directory (model.index/data, reference_outputs.npz), or skips the test."""
  root = os.environ.get("DETLAB_REFERENCE_DIR") or os.path.join(_REPO, "..", "shared",
                                                                 "reference")
  path = os.path.join(root, "automl_efficientdet_d0")
  if not os.path.exists(os.path.join(path, "model.index")):
    pytest.skip(f"google/automl D0 reference checkpoint not found at {path} (set "
                "DETLAB_REFERENCE_DIR to the directory holding automl_efficientdet_d0/).")
  return path
