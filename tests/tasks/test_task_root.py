"""train()'s task comes from `train.task`: the detection settings that older gin files bound on
`train` itself (model_fn, train_input, eval_input, loss, postprocess) are refused with an error
naming their DetectionTask binding, by train() and by configured_task() (what the API, export
and the benchmark build from). The run settings that stay on `train` (label_map_file,
annotation_file, coco_backend) are tests/tasks/test_task_settings.py's and
tests/e2e/test_readme_bindings.py's."""
import re

import gin
import pytest

from detlab import config
from detlab.training.experiment import configured_task, train

# The former train.* detection argument -> (a value an old gin file gave it, its new binding).
FORMER = {
    "model_fn": ("@efficientdet", "DetectionTask.model_fn"),
    "train_input": ("@train/InputConfig()", "DetectionTask.train_input"),
    "eval_input": ("@eval/InputConfig()", "DetectionTask.eval_input"),
    "loss": ("@DetectionLoss()", "DetectionTask.loss"),
    "postprocess": ("@PostprocessConfig()", "DetectionTask.postprocess_config"),
}
# Small and without data: were a refused binding accepted, the run would fail fast elsewhere.
QUICK = ["IMAGE_SIZE = 128", "TRAIN_FILE_PATTERN = '/nonexistent/train-*'",
         "EVAL_FILE_PATTERN = '/nonexistent/val-*'"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()  # unlocks too: an earlier test in this process may have locked it
  yield
  gin.clear_config()


@pytest.mark.parametrize("name", FORMER)
def test_a_former_detection_binding_on_train_names_its_new_binding(name, tmp_path):
  value, new = FORMER[name]
  config.parse_gin(["efficientdet_d0.gin"], QUICK + [f"train.{name} = {value}"])
  with pytest.raises(ValueError, match=re.escape(new)):
    train(str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before any work
  with pytest.raises(ValueError, match=re.escape(new)):
    configured_task()


def test_without_a_task_the_error_names_train_task(tmp_path):
  # A data-only file: schedule, optimizer and data, but no model and no task.
  config.parse_gin(["shapes_data.gin"], [])
  with pytest.raises(ValueError, match=re.escape("train.task")):
    train(str(tmp_path / "run"))
  with pytest.raises(ValueError, match=re.escape("train.task")):
    configured_task()


OLD_SAVED_CONFIG = """# operative_config.gin of a run from before train.task
efficientdet.backbone_fn = @efficientnet_b0
efficientdet.num_classes = 4
train.model_fn = @efficientdet
train.train_input = @train/InputConfig()
train.eval_input = @eval/InputConfig()
train.loss = @DetectionLoss()
train.postprocess = @PostprocessConfig()
train.label_map_file = 'shapes/label_map.json'
train/InputConfig.file_pattern = 'shapes/train-*'
eval/InputConfig.file_pattern = 'shapes/val-*'
PostprocessConfig.nms_mode = 'hard'
"""


def test_a_model_dir_config_of_an_older_release_still_loads(tmp_path):
  """detlab wrote `train.model_fn = ...` into every model_dir before train.task: export,
  detlab.api and --mode=eval read those files, so they are upgraded, not refused."""
  saved = tmp_path / "operative_config.gin"
  saved.write_text(OLD_SAVED_CONFIG)
  config.parse_gin([str(saved)], [])
  task = configured_task()
  assert type(task).__name__ == "DetectionTask"
  assert task.model_fn.__name__ == "efficientdet"
  assert task.train_input.file_pattern == "shapes/train-*"
  assert task.eval_input.file_pattern == "shapes/val-*"
  assert task.postprocess_config.nms_mode == "hard"
  assert task.label_map_file == "shapes/label_map.json"
  # The same lines in a user's own gin file are refused with the new binding's name.
  gin.clear_config()
  mine = tmp_path / "my_detector.gin"
  mine.write_text(OLD_SAVED_CONFIG)
  with pytest.raises(ValueError, match="DetectionTask.model_fn"):
    config.parse_gin([str(mine)], [])
    configured_task()
