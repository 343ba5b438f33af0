"""Category ids checked against num_classes before a run starts, not at a random step.

The input pipeline asserts 1 <= id <= num_classes per record, so a wrong NUM_CLASSES used to
stop a run at whatever step first met a bad record (and a resumed run replayed it). Here the
ids are known up front: from the label map (train.label_map_file, or the label_map.json the
converters write beside the shards) or, without one, from a scan of the records' class
labels (which reads every record once; only the label feature is parsed).
"""
import os

from absl import logging
import tensorflow as tf

from detlab.data.detection_input import list_files
from detlab.data.label_map import LABEL_MAP_NAME, read_label_map


def _label_map_ids(path: str) -> set[int]:
  return set(read_label_map(path))


def _scanned_ids(files: list[str]) -> set[int]:
  feature = {"image/object/class/label": tf.io.VarLenFeature(tf.int64)}
  dataset = tf.data.TFRecordDataset(files).batch(256).map(
      lambda r: tf.sparse.to_dense(tf.io.parse_example(r, feature)[
          "image/object/class/label"], default_value=1))
  ids = set()
  for labels in dataset:
    ids.update(labels.numpy().ravel().tolist())
  return ids


def category_ids(file_pattern: str, label_map_file: str | None = None) -> tuple[set[int], str]:
  """(the category ids the records use, where they came from)."""
  if label_map_file:
    return _label_map_ids(label_map_file), label_map_file
  files = list_files(file_pattern)
  maps = sorted({os.path.join(os.path.dirname(f), LABEL_MAP_NAME) for f in files})
  if all(tf.io.gfile.exists(m) for m in maps):
    return set().union(*(_label_map_ids(m) for m in maps)), ", ".join(maps)
  logging.info("No %s beside %s: scanning the records' category ids.", LABEL_MAP_NAME,
               file_pattern)
  return _scanned_ids(files), f"the records of {file_pattern}"


def check_category_ids(num_classes: int, label_map_file: str | None, *configs) -> None:
  """Raises ValueError naming the ids and their source when an id is < 1 or > num_classes.
  configs: InputConfigs (None and TFDS sources, whose ids are label + 1, are skipped)."""
  for config in configs:
    if config is None or config.tfds_name or not config.file_pattern:
      continue
    ids, source = category_ids(config.file_pattern, label_map_file)
    bad = sorted(i for i in ids if i < 1 or i > num_classes)
    if bad and bad[0] < 1:
      raise ValueError(f"Category id(s) {[i for i in bad if i < 1][:10]} in {source} are < 1 "
                       "(class index = id - 1): renumber the categories from 1 and re-create "
                       "the records.")
    if bad:
      raise ValueError(
          f"Category id(s) {bad[:10]} in {source} are outside 1..NUM_CLASSES={num_classes} "
          f"(class index = id - 1; the largest id is {max(ids)}). Set "
          f"--gin_bindings='NUM_CLASSES={max(ids)}' (ids are kept as they are, so NUM_CLASSES "
          "is the largest id).")
    logging.info("Category ids of %s: %d ids in 1..%d (from %s).", config.file_pattern,
                 len(ids), num_classes, source)
