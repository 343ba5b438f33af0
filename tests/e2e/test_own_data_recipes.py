"""The own-data recipes (gin_configs/*_own_data.gin) take new data with the bindings their
headers document, and nothing else: each parses, its task resolves, and every binding lands
where it takes effect (pointed at a tiny real set: data_tools.make_digits_sets, a few digits
per class). Building the models (10-40 s each here) is left to the tests of the gin files
they include and to the learning gates."""
import gin
import pytest

from data_tools import make_digits_sets
from detlab import config
from detlab.training.setup import train_argument
from tests.e2e.test_readme_bindings import check_bindings, resolve


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("digits")
  make_digits_sets.make_sets(str(out), seed=1, limit_per_class=4, num_train_scenes=4,
                             num_val_scenes=2, scene_size=64, max_digits=2, num_shards=1)
  return {"cls": out / "classification", "scenes": out / "scenes"}


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def documented_bindings(name: str, digits: dict) -> list[str]:
  """The bindings the recipe's header tells a user to set, pointed at the tiny set."""
  if name == "classification_own_data.gin":
    root = digits["cls"]
    return [f"TRAIN_FILE_PATTERN = '{root}/train-*'", f"EVAL_FILE_PATTERN = '{root}/val-*'",
            "NUM_CLASSES = 10", "IMAGE_SIZE = 32", "Schedule.num_train_images = 30"]
  root = digits["scenes"]
  common = [f"TRAIN_FILE_PATTERN = '{root}/train-*'", f"EVAL_FILE_PATTERN = '{root}/val-*'",
            "IMAGE_SIZE = 128", "Schedule.num_train_images = 4"]
  if name == "segmentation_own_data.gin":
    return common + ["NUM_CLASSES = 11"]
  return common + ["NUM_CLASSES = 10", f"train.label_map_file = '{root}/label_map.json'",
                   f"train.annotation_file = '{root}/val_annotations.json'"]


RECIPES = ["classification_own_data.gin", "efficientdet_d0_own_data.gin",
           "segmentation_own_data.gin"]


@pytest.mark.parametrize("name", RECIPES)
def test_own_data_recipe_takes_new_data_by_bindings_alone(name, digits):
  check_bindings([name], documented_bindings(name, digits))



def test_short_run_knobs_are_bound_where_the_recipes_say():
  """Few-class head init, BN momentum 0.9 and BN re-estimation in the classifier recipe; the
  detector keeps its stored statistics (infer and the API serve them)."""
  config.parse_gin(["classification_own_data.gin"], [])
  assert gin.query_parameter("classifier.head_init") == "fan_in"
  assert gin.query_parameter("ClassificationTask.bn_momentum") == 0.9
  assert train_argument("bn_reestimation").num_batches > 0
  for name, task in (("segmentation_own_data.gin", "SegmentationTask"),
                     ("efficientdet_d0_own_data.gin", "DetectionTask")):
    gin.clear_config()
    config.parse_gin([name], [])
    assert gin.query_parameter(f"{task}.bn_momentum") == 0.9
    reestimation = train_argument("bn_reestimation")
    assert (reestimation is not None) == (task == "SegmentationTask")
