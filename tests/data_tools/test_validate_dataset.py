"""The validator on the fixture with every problem: named, counted, repaired only when asked."""
import copy
import io
import json
import os
import subprocess
import sys

from bad_coco import CLEAN_IMAGE_IDS, EXPECTED, MAX_INSTANCES
from data_tools import validate_dataset
from detlab.data import dataset_checks
from detlab.data.dataset_checks import Repairs


def _ids(report, kind):
  return {p.annotation_id if p.annotation_id is not None else p.image_id
          for p in report.problems if p.kind == kind}


def test_report_names_each_problem_and_nothing_else(coco_fixture):
  coco = copy.deepcopy(coco_fixture["coco"])
  report = dataset_checks.validate_coco(coco, coco_fixture["image_dir"], MAX_INSTANCES,
                                        check_masks=True)
  assert {kind: _ids(report, kind) for kind in report.kinds()} == EXPECTED
  assert not report.ok and not any(p.repaired for p in report.problems)
  # Grayscale PNG, CMYK JPEG and the EXIF-rotated image (JSON in the upright frame) are fine.
  assert report.image_sizes[5] == (48, 32) and report.image_sizes[3] == (40, 40)
  assert "truncated" in next(p.message for p in report.problems if p.image_id == 10)
  table = report.table()
  for kind in EXPECTED:
    assert kind in table
  # Nothing asked, nothing changed: the data set comes back as it went in.
  assert report.dataset["annotations"] == coco_fixture["coco"]["annotations"]
  assert report.dataset["images"] == coco_fixture["coco"]["images"]
  assert report.num_images_without_annotations == 4  # 2 (clean), 8, 10, 11


def test_repairs_are_applied_only_when_asked_and_counted(coco_fixture):
  coco = copy.deepcopy(coco_fixture["coco"])
  only_clip = dataset_checks.validate_coco(coco, coco_fixture["image_dir"], MAX_INSTANCES,
                                           Repairs(clip_boxes=True))
  clipped = next(a for a in only_clip.dataset["annotations"] if a["id"] == 6)
  assert clipped["bbox"] == [30.0, 5.0, 10.0, 10.0]
  assert only_clip.repairs == {"clipped box": 1}
  assert {p.kind for p in only_clip.errors} == set(EXPECTED) - {
      "box_outside_image", "too_many_instances"}

  report = dataset_checks.validate_coco(coco, coco_fixture["image_dir"], MAX_INSTANCES,
                                        Repairs.all())
  assert report.ok
  assert {e["id"] for e in report.dataset["images"]} == CLEAN_IMAGE_IDS
  ann_ids = [a["id"] for a in report.dataset["annotations"]]
  assert len(ann_ids) == len(set(ann_ids)) and not {3, 4, 20, 30, 40} & set(ann_ids)
  assert report.repairs == {"clipped box": 1, "dropped annotation": 3, "dropped image": 6,
                            "dropped annotation of a dropped image": 2,
                            "renumbered annotation id": 1}
  assert coco == coco_fixture["coco"]  # the input dict is not modified


def test_exit_status_is_nonzero_on_errors_and_zero_after_repair(coco_fixture, tmp_path):
  log = io.StringIO()
  args = (coco_fixture["image_dir"], coco_fixture["json"], MAX_INSTANCES)
  assert validate_dataset.validate(*args, stream=log) == 1
  assert "--drop_bad_images" in log.getvalue() and "corrupt_image" in log.getvalue()
  repaired = str(tmp_path / "repaired.json")
  assert validate_dataset.validate(*args, Repairs.all(), repaired, stream=log) == 0
  log = io.StringIO()
  assert validate_dataset.validate(coco_fixture["image_dir"], repaired, MAX_INSTANCES,
                                   stream=log) == 0
  assert "too_many_instances" in log.getvalue() and "0 errors left" in log.getvalue()


def test_unreadable_input_is_a_clear_error(coco_fixture, tmp_path):
  log = io.StringIO()
  missing = str(tmp_path / "nope.json")
  assert validate_dataset.validate(coco_fixture["image_dir"], missing, stream=log) == 2
  assert "--object_annotations_file" in log.getvalue() and "nope.json" in log.getvalue()
  (tmp_path / "bad.json").write_text("{not json")
  assert validate_dataset.validate("x", str(tmp_path / "bad.json"), stream=log) == 2
  (tmp_path / "list.json").write_text(json.dumps({"images": []}))
  assert validate_dataset.validate("x", str(tmp_path / "list.json"), stream=log) == 2
  assert "'annotations' list is missing" in log.getvalue()


def test_invalid_ids_and_bad_segmentation_are_reported(coco_fixture):
  coco = copy.deepcopy(coco_fixture["coco"])
  coco["categories"].append({"id": 0, "name": "background"})
  coco["images"][1]["id"] = "empty"  # evaluation needs integer ids
  coco["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]  # a 2-point "polygon"
  report = dataset_checks.validate_coco(coco, coco_fixture["image_dir"], check_images=False,
                                        check_masks=True, repairs=Repairs.all())
  assert {"invalid_category_id", "non_integer_image_id"} <= {p.kind for p in report.errors}
  assert _ids(report, "bad_segmentation") == {1}


def test_python_m_validate_dataset(coco_fixture):
  """The one subprocess run: `python -m` works, prints the table, exits 1 on errors."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run(
      [sys.executable, "-m", "data_tools.validate_dataset",
       f"--image_dir={coco_fixture['image_dir']}",
       f"--object_annotations_file={coco_fixture['json']}", "--max_instances=4"],
      cwd=root, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1, result.stderr
  assert "duplicate_image_id" in result.stdout and "errors would corrupt" in result.stdout
  assert "[validate] 13/13 images" in result.stderr  # the progress line
  usage = subprocess.run([sys.executable, "-m", "data_tools.validate_dataset", "--help"],
                         cwd=root, capture_output=True, text=True, timeout=60)
  for flag in ("--image_dir", "--object_annotations_file", "--max_instances", "--repair",
               "--clip_boxes", "--output_annotations_file"):
    assert flag in usage.stdout  # (absl's --help exits with status 1)


def test_malformed_rows_are_reported_not_crashed_on(tmp_path):
  coco = {"images": [{"id": [1], "file_name": "x.jpg"}, {"id": 2, "file_name": None}],
          "annotations": [{"id": {"a": 1}, "image_id": [1], "category_id": [3], "bbox": "ab"},
                          {"image_id": 2, "category_id": 1, "bbox": [0, 0, float("nan"), 1]},
                          {"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5],
                           "segmentation": {"counts": "x"}}],
          "categories": [{"id": 1, "name": "a"}, {"id": "2"}]}
  report = dataset_checks.validate_coco(coco, str(tmp_path), check_masks=True)
  assert set(report.kinds()) == {
      "missing_image", "non_integer_image_id", "bad_annotation_id", "unknown_category",
      "invalid_category_id", "degenerate_box",
      "missing_iscrowd", "missing_area"}  # warnings: annotation 5 has neither field
  assert "category '2'" in report.table()
  repaired = dataset_checks.validate_coco(coco, str(tmp_path), repairs=Repairs.all())
  assert repaired.dataset["images"] == [] and repaired.dataset["annotations"] == []
