"""Bad data found before or during a run without stopping it at a random step: category ids
outside 1..NUM_CLASSES before training starts; a truncated or corrupt TFRecord shard skipped
from its bad record on, named in the log and in TensorBoard, the other records read."""
import glob
import json
import os
import shutil
import struct

import pytest
import tensorflow as tf

from detlab.data import record_files
from detlab.data.category_ids import check_category_ids
from detlab.data.detection_input import InputConfig, make_dataset
from detlab.detection.anchors import AnchorConfig


def _record_ends(path):
  """Byte offsets where each record of a TFRecord file ends (the framing, read by hand)."""
  data, ends, offset = open(path, "rb").read(), [], 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    offset += 16 + length
    ends.append(offset)
  return ends


def _copy_val(shapes_dir, tmp_path):
  for path in glob.glob(os.path.join(shapes_dir, "val-*")):
    shutil.copy(path, tmp_path)
  return sorted(glob.glob(str(tmp_path / "val-*")))


def _count_images(pattern):
  config = InputConfig(file_pattern=pattern, is_training=False)
  dataset = make_dataset(config, AnchorConfig(image_size=128, min_level=3, max_level=5),
                         4, batch_size=2)
  return sum(int(batch["images"].shape[0]) for batch in dataset)


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte"])
def test_a_damaged_shard_is_skipped_from_the_bad_record_counted_and_named(
    shapes_dir, tmp_path, damage):
  files = _copy_val(shapes_dir, tmp_path)
  ends = _record_ends(files[0])
  records = [len(_record_ends(f)) for f in files]
  data = bytearray(open(files[0], "rb").read())
  if damage == "truncate":   # an interrupted copy: cut inside record 2 (0-based)
    data = data[:ends[1] + 100]
  else:                      # a bit flip inside record 2's payload: its CRC fails
    data[ends[1] + 40] ^= 0xFF
  open(files[0], "wb").write(bytes(data))
  before = record_files.SKIPPED.count
  record_files.SKIPPED.report_to(str(tmp_path / "train"))
  try:
    seen = _count_images(str(tmp_path / "val-*"))
  finally:
    record_files.SKIPPED.report_to(None)
  assert seen == sum(records) - (records[0] - 2)  # records 0 and 1 of the shard survive
  assert record_files.SKIPPED.count == before + 1
  assert record_files.SKIPPED.files[files[0]] == ends[1]
  events = glob.glob(str(tmp_path / "train" / "events.*"))
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert {"data/files_cut_short", "data/file_cut_short"} <= tags


def test_intact_shards_are_read_whole(shapes_dir, tmp_path):
  _copy_val(shapes_dir, tmp_path)
  before = record_files.SKIPPED.count
  assert _count_images(str(tmp_path / "val-*")) == 8
  assert record_files.SKIPPED.count == before


def test_category_ids_above_num_classes_stop_before_training(shapes_dir):
  """The shapes data set has ids 1..4 (its label_map.json)."""
  config = InputConfig(file_pattern=os.path.join(shapes_dir, "train-*"))
  check_category_ids(4, None, config, None)
  with pytest.raises(ValueError, match=r"Category id\(s\) \[4\] in .*label_map.json are "
                                       r"outside 1..NUM_CLASSES=3 .*NUM_CLASSES=4"):
    check_category_ids(3, None, config)


def test_category_ids_are_scanned_from_the_records_without_a_label_map(shapes_dir, tmp_path):
  _copy_val(shapes_dir, tmp_path)  # no label_map.json copied
  config = InputConfig(file_pattern=str(tmp_path / "val-*"), is_training=False)
  with pytest.raises(ValueError, match=r"in the records of .* outside 1..NUM_CLASSES=2"):
    check_category_ids(2, None, config)
  label_map = tmp_path / "labels.json"
  label_map.write_text(json.dumps({"0": "background", "1": "a"}))
  with pytest.raises(ValueError, match=r"Category id\(s\) \[0\] .* are < 1"):
    check_category_ids(4, str(label_map), config)
