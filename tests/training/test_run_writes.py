"""Where a run writes (issue 23): a stopped run's TensorBoard events hold its last logged step,
and every summary writer a run opens is closed on every way out (done, stopped, raised);
`--mode=eval` and a non-chief
worker change nothing outside their own directories, cut-short shards included; an eval job's
events land in model_dir/eval, not model_dir/eval/eval."""
import glob
import os
import shutil
import sys

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import config
from detlab.data import record_files
from detlab.training import experiment

from tiny_backbone import StopAfter, tiny_bindings  # pylint: disable=import-error  (tests/training/)

STOP_AT = 3  # steps_per_loop = 1: the stand-in watcher asks to stop after the 3rd loop


def _train(model_dir, mode, data, *bindings):
  """train() in-process on `data` (a copy of the shapes set with cut-short shards)."""
  gin.clear_config()
  config.parse_gin(["efficientdet_d0_shapes.gin"], tiny_bindings(str(data), *bindings))
  try:
    keras.backend.clear_session()
    return experiment.train(str(model_dir), mode)
  finally:
    gin.clear_config()


def _cut_short(pattern: str) -> str:
  """Cuts the first file of `pattern` in the middle (inside a record); returns its path."""
  path = sorted(glob.glob(pattern))[0]
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  return path


def _files(directory) -> dict:
  """{relative path: (size, mtime_ns)} of every file under `directory`."""
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      found[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
  return found


def _scalars(directory) -> dict:
  """{step: {tag: value}} of the float scalars in the TensorBoard events in `directory`."""
  steps = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        if array.dtype.kind == "f":  # scalars, not the cut-short shards' text
          steps.setdefault(event.step, {})[value.tag] = float(array)
  return steps


def _keep_training_writers(patch, writers: list) -> None:
  """Appends every summary writer that detlab.training creates to `writers` (the data
  pipeline's own, for cut-short shards, flushes after each event and is not counted)."""
  create = tf.summary.create_file_writer

  def creating(*args, **kwargs):
    writer = create(*args, **kwargs)
    if sys._getframe(1).f_globals["__name__"].startswith("detlab.training."):  # pylint: disable=protected-access
      writers.append(writer)
    return writer
  patch.setattr(tf.summary, "create_file_writer", creating)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, shapes_dir):
  """A chief's training run (log every step) stopped at STOP_AT, on a copy of the shapes set
  with a train and a val shard cut short. Returns (model_dir, results, the copy, the cut
  files, the summary writers the run created)."""
  data = tmp_path_factory.mktemp("shapes_copy")
  for path in glob.glob(os.path.join(shapes_dir, "*")):
    shutil.copy(path, data)
  cut = [_cut_short(str(data / "train-*")), _cut_short(str(data / "val-*"))]
  model_dir = tmp_path_factory.mktemp("chief")
  writers = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(experiment, "PreemptionWatcher", lambda: StopAfter(STOP_AT))
    _keep_training_writers(patch, writers)
    results = _train(model_dir, "train", data, "Schedule.log_every_steps = 1",
                     "Schedule.train_steps = 8")
  yield model_dir, results, data, cut, writers
  del writers[:]


def _closed(writer) -> bool:
  return writer._closed  # pylint: disable=protected-access  (TF 2's _ResourceSummaryWriter)


def test_a_stopped_run_s_events_hold_its_last_logged_step(stopped_run):
  model_dir, results, _, _, writers = stopped_run
  assert results["preempted"]
  assert len(writers) == 1 and _closed(writers[0])  # train/
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{STOP_AT}")
  logged = _scalars(model_dir / "train")
  assert sorted(s for s in logged if "loss/total" in logged[s]) == list(range(1, STOP_AT + 1))
  last = logged[STOP_AT]
  assert {"loss/total", "loss/class", "loss/box", "grad_norm", "learning_rate"} <= set(last)
  assert last["loss/total"] == pytest.approx(results["train"]["total"], rel=1e-6)


def test_an_eval_job_changes_nothing_outside_eval(stopped_run):
  model_dir, _, data, cut, _ = stopped_run
  before = _files(model_dir)
  skipped = record_files.SKIPPED.count
  results = _train(model_dir, "eval", data)
  assert "AP" in results["metrics"]
  assert record_files.SKIPPED.count > skipped and cut[1] in record_files.SKIPPED.files
  after = _files(model_dir)
  outside = {k: v for k, v in after.items() if not k.startswith("eval" + os.sep)}
  assert outside == {k: v for k, v in before.items() if not k.startswith("eval" + os.sep)}
  assert not os.path.exists(model_dir / "eval" / "eval")
  # The evaluation's metrics and the cut-short shard's report both land in eval/'s events.
  tags = set().union(*_scalars(model_dir / "eval").values())
  assert "data/files_cut_short" in tags and any(t.endswith("/AP") for t in tags), tags
  assert (model_dir / "eval" / "metrics.json").exists()


def test_a_non_chief_worker_changes_nothing_in_model_dir(stopped_run, monkeypatch):
  """A worker that is not the chief (task_of says so) resumes the chief's checkpoint, trains,
  saves and evaluates into workertemp_1, which it removes: model_dir is left as it was."""
  model_dir, _, data, cut, _ = stopped_run
  before = _files(model_dir)
  monkeypatch.setattr(experiment, "task_of", lambda strategy: ("worker", 1, False))
  monkeypatch.setattr(experiment, "write_dir",
                      lambda directory, strategy: os.path.join(directory, "workertemp_1"))
  skipped = record_files.SKIPPED.count
  results = _train(model_dir, "train_and_eval", data, f"Schedule.train_steps = {STOP_AT + 2}")
  assert not results["preempted"] and "AP" in results["metrics"]
  assert record_files.SKIPPED.count > skipped and cut[0] in record_files.SKIPPED.files
  assert _files(model_dir) == before


def test_a_run_that_raises_closes_its_summary_writers(stopped_run, monkeypatch):
  model_dir, _, data, _, _ = stopped_run
  writers = []
  _keep_training_writers(monkeypatch, writers)

  def failing(*args, **kwargs):
    raise RuntimeError("a step went wrong")
  monkeypatch.setattr(experiment, "run_training", failing)
  with pytest.raises(RuntimeError, match="a step went wrong"):
    _train(model_dir, "train_and_eval", data, f"Schedule.train_steps = {STOP_AT + 1}")
  assert len(writers) == 2 and all(_closed(w) for w in writers)  # eval/ and train/
