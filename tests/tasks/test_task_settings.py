"""Task.use_settings: the run settings bound on train() (train.label_map_file,
train.annotation_file, train.coco_backend) reach the tasks that take them and are refused,
by name, by the others; contradicting a task's own binding is an error."""
import pytest

from detlab.evaluation.coco_backends import resolve_backend
from detlab.tasks.classification import ClassificationTask
from detlab.tasks.detection import DetectionTask
from detlab.tasks.joint import JointTask
from detlab.training.setup import reject_removed, resolve_task


class _Model:  # what DetectionTask.evaluator reads of a model
  num_classes = 2


def test_run_settings_reach_the_detection_task_and_its_evaluator():
  task = resolve_task(DetectionTask(), label_map_file=None, annotation_file=None,
                      coco_backend="pycocotools")
  assert task.coco_backend == "pycocotools"
  assert task.evaluator(_Model()).coco.backend == "pycocotools"
  assert DetectionTask().evaluator(_Model()).coco.backend == resolve_backend(None)


def test_the_joint_task_hands_them_to_its_detection_part():
  task = resolve_task(JointTask(model_fn=None), annotation_file="a.json")
  assert task.detection.annotation_file == "a.json"


def test_a_setting_the_task_does_not_take_is_refused_by_name():
  task = ClassificationTask(num_classes=3, image_size=32)
  with pytest.raises(ValueError, match="train.annotation_file does not apply to the "
                                       "classification task"):
    resolve_task(task, annotation_file="x.json")
  assert resolve_task(task, annotation_file=None, label_map_file=None) is task


def test_a_setting_that_contradicts_the_task_binding_is_refused():
  with pytest.raises(ValueError, match="contradicts DetectionTask.label_map_file"):
    resolve_task(DetectionTask(label_map_file="a.json"), label_map_file="b.json")
  same = resolve_task(DetectionTask(label_map_file="a.json"), label_map_file="a.json")
  assert same.label_map_file == "a.json"


def test_an_unknown_train_argument_is_refused_by_name():
  with pytest.raises(ValueError, match="train\\(\\) has no parameter 'modl_fn'"):
    reject_removed(["modl_fn"])


def test_a_task_holds_no_model():
  with pytest.raises(TypeError, match="holds no model"):
    DetectionTask(object())


def test_a_task_names_no_best_metric_by_default_and_a_loss_is_refused(tmp_path):
  """The base Task once defaulted to primary_metric "loss" while best/ keeps the highest
  value: the worst checkpoint would have been kept as the best."""
  from detlab.tasks.base import Task  # pylint: disable=import-outside-toplevel
  from detlab.training.checkpoint import BestCheckpoint  # pylint: disable=import-outside-toplevel
  assert Task.primary_metric is None
  assert (DetectionTask.primary_metric, ClassificationTask.primary_metric) == ("AP", "top1")
  for metric in ("loss", "val_loss", None):
    with pytest.raises(ValueError, match="higher is better"):
      BestCheckpoint(str(tmp_path), metric)
  assert BestCheckpoint(str(tmp_path), "mIoU").metric == "mIoU"
