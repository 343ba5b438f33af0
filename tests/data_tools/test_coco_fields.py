"""iscrowd as a string, missing area/iscrowd, a category without a name: caught or normalised
by the validator, with the file and the annotation id in the message, before any record."""
import io
import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from data_tools import create_coco_tfrecord, validate_dataset
from detlab.data import dataset_checks
from detlab.data.coco_fields import crowd_flag, normalise_annotation
from detlab.data.tf_example import decode_example


def _coco(annotations, categories=({"id": 1, "name": "thing"},)):
  return {"images": [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 48}],
          "annotations": list(annotations), "categories": list(categories)}


def _write(tmp_path, coco):
  buffer = io.BytesIO()
  Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(buffer, format="JPEG")
  (tmp_path / "a.jpg").write_bytes(buffer.getvalue())
  path = tmp_path / "train.json"
  path.write_text(json.dumps(coco))
  return str(path)


BOX = [4, 4, 20, 10]


@pytest.mark.parametrize("value,flag", [(0, 0), (1, 1), ("0", 0), ("1", 1), (" 1 ", 1),
                                        (False, 0), (True, 1), (1.0, 1), ("true", 1),
                                        ("yes", None), (2, None), (None, None), ([0], None)])
def test_crowd_flag_reads_the_spellings_and_nothing_else(value, flag):
  assert crowd_flag(value) == flag


def test_missing_area_and_iscrowd_are_normalised_and_reported():
  fixed, found = normalise_annotation({"id": 3, "bbox": [1, 2, 5, 4]})
  assert fixed["iscrowd"] == 0 and fixed["area"] == 20.0
  assert [kind for kind, _ in found] == ["missing_iscrowd", "missing_area"]


def test_validator_normalises_string_iscrowd_and_names_file_and_annotation(tmp_path):
  coco = _coco([{"id": 7, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 200,
                 "iscrowd": "0"},
                {"id": 8, "image_id": 1, "category_id": 1, "bbox": BOX}])
  path = _write(tmp_path, coco)
  log = io.StringIO()
  report = validate_dataset.check_dataset(coco, str(tmp_path), stream=log, source=path)
  assert report.ok, log.getvalue()
  by_id = {a["id"]: a for a in report.dataset["annotations"]}
  assert by_id[7]["iscrowd"] == 0 and by_id[8]["iscrowd"] == 0 and by_id[8]["area"] == 200.0
  messages = {p.kind: p.message for p in report.problems}
  assert messages["iscrowd_not_integer"] == (
      f"{path}: annotation 7 has iscrowd '0' (str); read as 0")
  assert messages["missing_area"].startswith(f"{path}: annotation 8 has no 'area'")
  assert messages["missing_iscrowd"].startswith(f"{path}: annotation 8 ")
  assert report.repairs["normalised iscrowd not integer"] == 1


def test_unreadable_iscrowd_and_area_are_errors(tmp_path):
  coco = _coco([{"id": 5, "image_id": 1, "category_id": 1, "bbox": BOX, "area": "big",
                 "iscrowd": "yes"}])
  report = dataset_checks.validate_coco(coco, str(tmp_path), check_images=False,
                                        source="my.json")
  assert {p.kind for p in report.errors} == {"bad_iscrowd", "bad_area"}
  assert all(p.message.startswith("my.json: annotation 5 has ") for p in report.errors)
  repaired = dataset_checks.validate_coco(coco, str(tmp_path), check_images=False,
                                          repairs=dataset_checks.Repairs.all())
  assert repaired.ok and repaired.dataset["annotations"] == []


def test_category_without_name_stops_the_converter_with_the_file_named(tmp_path):
  coco = _coco([{"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 200,
                 "iscrowd": 0}], categories=[{"id": 1}])
  path = _write(tmp_path, coco)
  log = io.StringIO()
  status = create_coco_tfrecord.convert(str(tmp_path), path, str(tmp_path / "out" / "train"),
                                        num_shards=1, stream=log)
  assert status == 1
  assert f"{path}: category 1 has no 'name'" in log.getvalue()
  assert not (tmp_path / "out").exists()


def test_converter_writes_string_iscrowd_zero_as_not_crowd(tmp_path):
  """bool("0") is True: the converter made every such object a crowd box (dropped from
  training, ignored in evaluation)."""
  coco = _coco([{"id": 1, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 200,
                 "iscrowd": "0"},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": BOX, "area": 200,
                 "iscrowd": "1"}])
  path = _write(tmp_path, coco)
  log = io.StringIO()
  status = create_coco_tfrecord.convert(str(tmp_path), path, str(tmp_path / "train"),
                                        num_shards=1, stream=log)
  assert status == 0, log.getvalue()
  record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "train-00000-of-00001.tfrecord"))))
  assert decode_example(record)["is_crowd"].numpy().tolist() == [False, True]
