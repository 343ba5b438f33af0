"""Every gin file parses; names resolve; D0's gin file binds the paper's D0."""
import gin
import pytest

from detlab import config


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


# Data-only files: no model of their own; they go after a detector file.
DATA_FILES = ("shapes_data.gin",)
# Task add-ons: they turn the detector file before them into another task.
ADD_ON_FILES = ("instance_segmentation_recipe.gin",)
# Recipe add-ons: the same detector, trained another way.
RECIPE_FILES = ("quantization_aware_training.gin",)


@pytest.mark.parametrize("name", config.available_gin_files())
def test_every_gin_file_parses(name):
  """Every file binds `train.task` (detection files `@DetectionTask()` with its model_fn);
  which task each resolves to, and with what, is tests/e2e/test_readme_bindings.py's."""
  after_a_detector = DATA_FILES + ADD_ON_FILES + RECIPE_FILES
  files = ["efficientdet_d0.gin", name] if name in after_a_detector else [name]
  config.parse_gin(files, [])
  assert gin.query_parameter("train.task") is not None
  assert gin.query_parameter("%NUM_CLASSES") and gin.query_parameter("%IMAGE_SIZE")
  if name.startswith("instance_segmentation_") or name in ADD_ON_FILES:
    assert gin.query_parameter("train.task").selector == "InstanceSegmentationTask"
    assert gin.query_parameter("DetectionTask.model_fn").selector == "efficientdet"
  elif name.startswith("efficientdet_") or name in DATA_FILES + RECIPE_FILES:
    assert gin.query_parameter("train.task").selector == "DetectionTask"
    assert gin.query_parameter("DetectionTask.model_fn").selector == "efficientdet"
  if name in RECIPE_FILES or name.endswith("_qat.gin"):
    assert gin.query_parameter("efficientdet.quantization_aware") is True


def test_a_data_file_after_a_detector_file_keeps_the_model_and_sets_the_data():
  config.parse_gin(["efficientdet_inception_v3.gin", "shapes_data.gin"], [])
  assert gin.query_parameter("efficientdet.backbone_fn").selector == "inception_v3"
  assert gin.query_parameter("efficientdet.fpn_width") == 88
  assert gin.query_parameter("%NUM_CLASSES") == 4
  assert gin.query_parameter("%TRAIN_FILE_PATTERN") == "data/shapes/train-*.tfrecord"


def test_d0_shapes_keeps_every_binding_of_d0_plus_the_shapes_data_file():
  config.parse_gin(["efficientdet_d0_shapes.gin"], [])
  demo = set(gin.config_str().splitlines())
  gin.clear_config()
  config.parse_gin(["efficientdet_d0.gin", "shapes_data.gin"], [])
  assert set(gin.config_str().splitlines()) <= demo


def test_unknown_gin_name_lists_the_available_files():
  with pytest.raises(FileNotFoundError) as error:
    config.resolve_gin_file("efficientdet_d9.gin")
  assert "efficientdet_d0.gin" in str(error.value)
  assert "efficientdet_d0_shapes.gin" in str(error.value)


def test_d0_gin_binds_the_reference_d0():
  # The model it builds (the reference's 3,927,203 parameters and 2.549 G multiply-adds at
  # 512) is checked in tests/models/test_efficientdet_scaling.py, D1-D7x's counts too.
  config.parse_gin(["efficientdet_d0.gin"], ["IMAGE_SIZE = 128"])
  assert gin.query_parameter("efficientdet.fpn_width") == 64
  assert gin.query_parameter("efficientdet.fpn_cells") == 3
  assert gin.query_parameter("DetectionLoss.gamma") == 1.5


def test_a_misspelt_backbone_names_the_registered_ones():
  with pytest.raises(ValueError, match=r"(?s)Did you mean: @efficientnet_b0.*Registered "
                     r"backbones: efficientnet_b0, .*inception_v1, .*xception\."):
    config.parse_gin(["classification_efficientnet_b0.gin"],
                     ["classifier.backbone_fn = @efficentnet_b0"])


def test_the_hint_is_only_for_unknown_references():
  assert config.unknown_reference_hint("Unknown macro 'FOO'") is None
