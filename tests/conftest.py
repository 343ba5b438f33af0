"""Fixtures shared by all tests: a tiny built-in data set made on the fly."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
  # xdist workers share the cores: each TF (and every process a test starts, which inherits
  # this) gets its share of intra-op threads instead of one per core each. On 2 cores with
  # `-n 2` that is 1, and the suite runs faster than with TF's default (Eigen's pool threads
  # spin and the two workers' pools contend): tests/models/test_backbone_detectors.py's
  # training cases 129 s instead of 190 s beside another test file.
  os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(
      1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# tests/training's tiny backbone is imported as `tiny_backbone` from every test directory: one
# module, so its gin registration happens once (a second name would register it twice).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "training"))

import pytest  # noqa: E402

# Imported before any test imports TensorFlow, so tests run with the oneDNN setting that
# detlab's entry points choose (detlab/__init__.py).
import detlab  # noqa: E402,F401  pylint: disable=unused-import


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  """A small built-in shapes data set (16 train, 8 val images) in a temp directory."""
  from data_tools.make_shapes_dataset import make_dataset
  out = tmp_path_factory.mktemp("shapes")
  make_dataset(str(out), num_train=16, num_val=8, num_shards=2, seed=0, workers=1)
  return str(out)


def pytest_configure(config):
  # `python -m pytest tests -m "not slow"` skips the few tests that take a minute or more.
  config.addinivalue_line("markers", "slow: takes a minute or more on 2 cores")


# Backbones built once per test process (each xdist worker), for tests that only read them.
_BACKBONE_CACHE_MAX_PARAMS = 80_000_000  # ~0.3 GB of float32 weights held at most


@pytest.fixture(scope="session")
def built_backbone():
  """The function (name, size=None) -> the registered backbone `name` from
  `detlab.backbones.BACKBONES`, built with its builder's defaults (size: a static
  (size, size, 3) input instead), memoised for the session of this process.

  Only for tests that read the model: its layers, output structure, parameter count, or an
  inference-mode call on inputs the test makes. A test that trains it, loads weights into it,
  changes a layer or compares values that depend on its random initial weights builds its own.
  The least recently used models are dropped once the cached ones hold more than
  _BACKBONE_CACHE_MAX_PARAMS parameters.
  """
  import collections  # pylint: disable=import-outside-toplevel
  from detlab.backbones import BACKBONES  # pylint: disable=import-outside-toplevel
  cache = collections.OrderedDict()

  def build(name: str, size: int | None = None):
    key = (name, size)
    if key in cache:
      cache.move_to_end(key)
      return cache[key]
    kwargs = {} if size is None else {"input_shape": (size, size, 3)}
    model = cache[key] = BACKBONES[name](**kwargs)
    while len(cache) > 1 and sum(m.count_params() for m in cache.values()) > (
        _BACKBONE_CACHE_MAX_PARAMS):
      cache.popitem(last=False)
    return model

  return build


# Files of a minute or more (measured in a full `-n 2 --dist loadfile` run), started first:
# xdist hands whole files to whichever worker is free, so one of these left to the end would
# run alone while the other worker idles (longest-first keeps both busy to the end).
HEAVY_FILES_FIRST = (
    "tests/e2e/test_learning_detection.py", "tests/e2e/test_train_cli.py",
    "tests/training/test_distribution.py", "tests/layers/test_functional.py",
    "tests/e2e/test_learning_joint.py", "tests/export/test_saved_model.py",
    "tests/data_tools/test_convert_automl_checkpoint.py", "tests/test_benchmark.py",
    "tests/training/test_preemption_eval.py", "tests/e2e/test_learning_segmentation.py",
    "tests/training/test_multi_worker_preemption.py", "tests/training/test_run_writes.py",
    "tests/export/test_instance_serving.py", "tests/training/test_bn_reestimation.py",
    "tests/data/test_instance_masks.py", "tests/tasks/test_instance_segmentation_task.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  rank = {name: i for i, name in enumerate(HEAVY_FILES_FIRST)}
  root = str(config.rootpath)

  def file_rank(item) -> int:
    path = os.path.relpath(str(item.path), root).replace(os.sep, "/")
    return rank.get(path, len(rank))
  items.sort(key=file_rank)  # stable: the order within a file and among the rest is kept
