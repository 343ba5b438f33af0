"""train()'s task argument: a task, or the legacy detection arguments, never both."""
import pytest

from detlab.tasks.classification import ClassificationTask
from detlab.tasks.detection import DetectionTask
from detlab.training.experiment import _resolve_task


def test_legacy_detection_arguments_build_a_detection_task():
  model_fn = object()
  task = _resolve_task(None, model_fn=model_fn, train_input=None, eval_input=None, loss=None,
                       postprocess=None, label_map_file="labels.json", annotation_file=None)
  assert isinstance(task, DetectionTask) and task.model_fn is model_fn
  assert task.label_map_file == "labels.json" and task.primary_metric == "AP"


def test_a_task_and_legacy_arguments_together_are_refused_by_name():
  task = ClassificationTask(num_classes=3, image_size=32)
  with pytest.raises(ValueError, match="train.label_map_file, train.model_fn"):
    _resolve_task(task, model_fn=object(), train_input=None, eval_input=None, loss=None,
                  postprocess=None, label_map_file="x.json", annotation_file=None)
  assert _resolve_task(task, model_fn=None, train_input=None, eval_input=None, loss=None,
                       postprocess=None, label_map_file=None, annotation_file=None) is task


def test_neither_names_both_ways_to_fix_it():
  with pytest.raises(ValueError, match="train.task nor train.model_fn"):
    _resolve_task(None, model_fn=None, train_input=None, eval_input=None, loss=None,
                  postprocess=None, label_map_file=None, annotation_file=None)


def test_train_coco_backend_reaches_the_coco_evaluator(monkeypatch):
  """`train.coco_backend = 'pycocotools'` (the issue's name) selects the reference backend;
  unset, the evaluator's own default (or a `CocoEvaluator.backend` binding) applies."""
  from detlab.tasks import detection_eval  # pylint: disable=import-outside-toplevel
  made = []

  class Recorder:
    def __init__(self, names, annotation_file, **kwargs):
      made.append(kwargs)

    def evaluate(self):
      return {}, {}

  monkeypatch.setattr(detection_eval, "CocoEvaluator", Recorder)
  task = _resolve_task(None, model_fn=object(), train_input=None, eval_input=None, loss=None,
                       postprocess=None, label_map_file=None, annotation_file=None,
                       coco_backend="pycocotools")
  assert task.coco_backend == "pycocotools"
  detection_eval.evaluate_detections(None, [], {1: "a"}, backend=task.coco_backend)
  detection_eval.evaluate_detections(None, [], {1: "a"})
  assert made == [{"backend": "pycocotools"}, {}]
