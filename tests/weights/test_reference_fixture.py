"""reference_fixture.automl_d0_dir: a missing oracle is a skip locally and an error under
CI=true, and both say where it looked."""
import os

import pytest

import reference_fixture
from reference_fixture import automl_d0_dir


@pytest.fixture
def empty_reference_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("DETLAB_REFERENCE_DIR", str(tmp_path))
  return tmp_path


def test_missing_reference_is_an_error_under_ci(empty_reference_dir, monkeypatch):
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception) as failure:
    automl_d0_dir()
  message = str(failure.value)
  assert str(empty_reference_dir / "automl_efficientdet_d0") in message
  assert "DETLAB_REFERENCE_DIR" in message and "CI=true" in message


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_missing_reference_is_a_skip_outside_ci(empty_reference_dir, monkeypatch, ci):
  if ci is None:
    monkeypatch.delenv("CI", raising=False)
  else:
    monkeypatch.setenv("CI", ci)
  with pytest.raises(pytest.skip.Exception) as skip:
    automl_d0_dir()
  assert str(empty_reference_dir / "automl_efficientdet_d0") in str(skip.value)


def test_default_location_is_beside_the_repository(tmp_path, monkeypatch):
  monkeypatch.delenv("DETLAB_REFERENCE_DIR", raising=False)
  monkeypatch.setenv("CI", "true")
  repo = tmp_path / "repo"
  monkeypatch.setattr(reference_fixture, "_REPO", str(repo))
  with pytest.raises(pytest.fail.Exception) as failure:
    automl_d0_dir()
  expected = os.path.join(str(tmp_path), "shared", "reference", "automl_efficientdet_d0")
  assert expected in str(failure.value)
  # Present there: found, under CI too.
  os.makedirs(expected)
  open(os.path.join(expected, "model.index"), "w").close()
  assert automl_d0_dir() == expected
