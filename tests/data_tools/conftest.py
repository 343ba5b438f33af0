"""Fixtures for the data-tool tests: the problem-laden COCO set (bad_coco.py), converted."""
import io
import json

import pytest

from bad_coco import MAX_INSTANCES, make_coco_fixture


@pytest.fixture(scope="session")
def coco_fixture(tmp_path_factory) -> dict:
  return make_coco_fixture(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def converted(coco_fixture, tmp_path_factory) -> dict:
  """The fixture converted with --repair --include_masks into 2 shards."""
  from data_tools import create_coco_tfrecord
  from detlab.data.dataset_checks import Repairs
  out = tmp_path_factory.mktemp("records")
  log = io.StringIO()
  status = create_coco_tfrecord.convert(
      coco_fixture["image_dir"], coco_fixture["json"], str(out / "train"), num_shards=2,
      include_masks=True, repairs=Repairs.all(), max_instances=MAX_INSTANCES, stream=log,
      output_annotations_file=str(out / "repaired.json"))
  return {"status": status, "log": log.getvalue(), "dir": out,
          "pattern": str(out / "train-*.tfrecord"),
          "repaired": json.loads((out / "repaired.json").read_text())}
