"""Label maps: the one place that reads and writes them.

A label map is a JSON object of id -> name, keys as strings (JSON has no integer keys):
  detection and segmentation: category ids, {"1": "person", "2": "bicycle", ...}
    (segmentation adds "0": "background");
  classification: class indices 0..K-1, {"0": "cat", "1": "dog", ...}.
The data_tools converters write it as LABEL_MAP_NAME beside the shards; `train.label_map_file`,
`detlab.infer --label_map_file`, `data_tools.inspect_dataset --label_map` and the exporter read
it. Any tf.io.gfile path (local, gs://, ram://).
"""
import json
from typing import Iterable, Mapping

import tensorflow as tf

from detlab import io

LABEL_MAP_NAME = "label_map.json"  # what the converters write beside the shards
_EXAMPLE = '{"1": "cat", "2": "dog"}'


class LabelMapError(ValueError):
  """A label map that is not a JSON object of integer id -> name; the message names the file."""


def _describe(path: str, flag: str | None) -> str:
  return f"{flag}={path}" if flag else f"label map {path}"


def read_label_map(path: str, flag: str | None = None) -> dict[int, str]:
  """{id: name} from the JSON label map at `path`.

  flag: the command-line flag or binding that named the file (e.g. "--label_map_file"), so the
  error says which setting to change. Raises FileNotFoundError when the file is missing and
  LabelMapError (a ValueError) when it is not a JSON object of integer id -> name.
  """
  where = _describe(path, flag)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{where} does not exist; give a JSON file of id -> name such as {_EXAMPLE} (the "
        f"data_tools converters write {LABEL_MAP_NAME} beside the records).")
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  try:
    table = json.loads(text)
  except ValueError as error:
    raise LabelMapError(f"{where} is not JSON ({error}); it should be an object of id -> "
                        f"name such as {_EXAMPLE}.") from error
  if not isinstance(table, dict):
    raise LabelMapError(f"{where} is a JSON {type(table).__name__}, not an object of id -> "
                        f"name such as {_EXAMPLE}.")
  names = {}
  for key, name in table.items():
    try:
      names[int(key)] = str(name)
    except ValueError as error:
      raise LabelMapError(f"{where} has the key {key!r}, not an integer id; keys are ids as "
                          f"in {_EXAMPLE}.") from error
  return names


def category_names(label_map_file: str | None, annotation_file: str | None,
                   num_classes: int) -> dict[int, str]:
  """{category id: name} for a detector's metrics and pictures: from the label map when one is
  given, else from a COCO annotation file's "categories", else the ids 1..num_classes as their
  own names."""
  if label_map_file:
    return read_label_map(label_map_file)
  if annotation_file:
    with tf.io.gfile.GFile(annotation_file) as f:
      return {c["id"]: c["name"] for c in json.load(f)["categories"]}
  return {i: str(i) for i in range(1, num_classes + 1)}


def class_names(path: str) -> list[str]:
  """A classification label map's names by class index; its keys must be 0..K-1 without gaps
  (what `write_class_names` and create_classification_tfrecord write)."""
  table = read_label_map(path)
  indices = sorted(table)
  if indices != list(range(len(indices))):
    raise LabelMapError(f"label map {path}: class indices must be 0..{len(indices) - 1} "
                        f"without gaps, got {indices[:10]}; a classification label map is "
                        '{"0": name, "1": name, ...}.')
  return [table[i] for i in indices]


def write_label_map(path: str, names: Mapping[int, str]) -> None:
  """{id: name} as a label map JSON at `path` (sorted by id), written whole (detlab.io)."""
  io.write_json(path, {str(k): str(names[k]) for k in sorted(names)}, indent=1)


def write_class_names(path: str, names: Iterable[str]) -> None:
  """Class names by index (0..K-1) as a label map at `path`."""
  write_label_map(path, dict(enumerate(names)))
