"""detlab.data.label_map: the one reader and writer of label maps."""
import json

import pytest
import tensorflow as tf

from detlab.data import label_map


def test_written_label_map_reads_back_with_integer_ids_on_ram_and_local(tmp_path):
  for root in ("ram://detlab_label_map_test", str(tmp_path)):
    tf.io.gfile.makedirs(root)
    path = f"{root}/{label_map.LABEL_MAP_NAME}"
    label_map.write_label_map(path, {12: "zebra", 3: "cat"})
    label_map.write_label_map(path, {2: "dog", 1: "cat"})  # a rewrite replaces the file
    with tf.io.gfile.GFile(path) as f:
      assert json.load(f) == {"1": "cat", "2": "dog"}
    assert label_map.read_label_map(path) == {1: "cat", 2: "dog"}


def test_category_names_prefer_the_label_map_then_the_annotations_then_the_ids(tmp_path):
  labels, annotations = tmp_path / "labels.json", tmp_path / "instances.json"
  labels.write_text(json.dumps({"7": "kite"}))
  annotations.write_text(json.dumps({"categories": [{"id": 5, "name": "bus"}],
                                     "images": [], "annotations": []}))
  assert label_map.category_names(str(labels), str(annotations), 3) == {7: "kite"}
  assert label_map.category_names(None, str(annotations), 3) == {5: "bus"}
  assert label_map.category_names(None, None, 3) == {1: "1", 2: "2", 3: "3"}


def test_class_names_are_by_index_and_refuse_gaps(tmp_path):
  path = str(tmp_path / "classes.json")
  label_map.write_class_names(path, ["cat", "dog", "fox"])
  assert label_map.class_names(path) == ["cat", "dog", "fox"]
  label_map.write_label_map(path, {0: "cat", 2: "fox"})
  with pytest.raises(label_map.LabelMapError, match=r"0\.\.1 without gaps, got \[0, 2\]"):
    label_map.class_names(path)


@pytest.mark.parametrize("text, message", [
    ('["cat", "dog"]', "is a JSON list, not an object of id -> name"),
    ('{"cat": 1}', "has the key 'cat', not an integer id"),
    ("{1: cat}", "is not JSON"),
])
def test_a_malformed_label_map_names_the_file_and_the_form(tmp_path, text, message):
  path = tmp_path / "labels.json"
  path.write_text(text)
  with pytest.raises(label_map.LabelMapError, match=message) as raised:
    label_map.read_label_map(str(path), flag="--label_map_file")
  assert f"--label_map_file={path}" in str(raised.value)


def test_a_missing_label_map_says_what_to_give():
  with pytest.raises(FileNotFoundError, match=r"label map /nonexistent/l\.json does not exist; "
                     r"give a JSON file of id -> name"):
    label_map.read_label_map("/nonexistent/l.json")
