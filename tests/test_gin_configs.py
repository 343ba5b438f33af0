"""Every gin file parses; names resolve; D0 through gin is the paper's D0."""
import gin
import pytest

from detlab import config


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("name", config.available_gin_files())
def test_every_gin_file_parses(name):
  config.parse_gin([name], [])
  assert gin.query_parameter("train.model_fn") is not None


def test_unknown_gin_name_lists_the_available_files():
  with pytest.raises(FileNotFoundError) as error:
    config.resolve_gin_file("efficientdet_d9.gin")
  assert "efficientdet_d0.gin" in str(error.value)
  assert "efficientdet_d0_shapes.gin" in str(error.value)


def test_d0_gin_builds_the_reference_d0():
  config.parse_gin(["efficientdet_d0.gin"], ["IMAGE_SIZE = 128"])
  assert gin.query_parameter("efficientdet.fpn_width") == 64
  assert gin.query_parameter("efficientdet.fpn_cells") == 3
  assert gin.query_parameter("DetectionLoss.gamma") == 1.5
  model = gin.query_parameter("train.model_fn").scoped_configurable_fn()
  assert model.count_params() == 3_927_203
