"""A truncated TFRecord shard in the classification, segmentation and joint inputs is what it
is in detection's (tests/data/test_input_failures.py): named in the log, counted in
record_files.SKIPPED, skipped from the bad record on, and the good records still come out.
(TFDS splits: tests/data/test_tfds_files.py.)"""
import io
import logging
import struct

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from detlab.data import record_files
from detlab.data.classification_example import build_classification_example
from detlab.data.classification_input import (ClassificationInputConfig,
                                              make_classification_dataset)
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.joint_input import JointParser, make_joint_dataset
from detlab.data.segmentation_example import build_segmentation_example, mask_features
from detlab.data.segmentation_input import SegmentationInputConfig
from detlab.data.segmentation_input import make_dataset as make_segmentation_dataset
from detlab.data.tf_example import build_example, encode_png
from detlab.detection.anchors import AnchorConfig

PER_SHARD = 3


def _image(i: int) -> np.ndarray:
  return np.full([24, 32, 3], 20 * i, np.uint8)


def _classification_record(i: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(_image(i)).save(buffer, format="PNG")
  return build_classification_example(buffer.getvalue(), i % 3, str(i % 3), 24, 32,
                                      "png").SerializeToString()


def _segmentation_record(i: int) -> bytes:
  labels = np.zeros([24, 32], np.uint8)
  labels[4:12, 4:20] = 1
  return build_segmentation_example(encoded_image=encode_png(_image(i)), image_format="png",
                                    source_id=str(i), height=24, width=32,
                                    label_map=labels).SerializeToString()


def _joint_record(i: int) -> bytes:
  labels = np.zeros([24, 32], np.uint8)
  labels[4:12, 4:20] = 2
  example = build_example(encoded_image=encode_png(_image(i)), image_format="png",
                          source_id=str(i), height=24, width=32, boxes_yxyx=[[4, 4, 12, 20]],
                          category_ids=[2], category_names=["rectangle"])
  for key, feature in mask_features(labels).items():
    example.features.feature[key].CopyFrom(feature)
  return example.SerializeToString()


def _write_and_cut(directory, make_record) -> tuple[str, str, int]:
  """Two shards of PER_SHARD records (record i of shard s is number 3 s + i); shard 0 cut
  inside its record 1. Returns (pattern, the cut file, the byte where reading stops)."""
  for shard in range(2):
    with tf.io.TFRecordWriter(str(directory / f"part-{shard}.tfrecord")) as writer:
      for i in range(PER_SHARD):
        writer.write(make_record(PER_SHARD * shard + i))
  path = str(directory / "part-0.tfrecord")
  data = open(path, "rb").read()
  (length,) = struct.unpack("<Q", data[:8])
  first_end = 16 + length  # record 0's framing: length, its CRC, the data, the data's CRC
  open(path, "wb").write(data[:first_end + 30])
  return str(directory / "part-*.tfrecord"), path, first_end


def _classification(pattern):
  config = ClassificationInputConfig(file_pattern=pattern, is_training=False, image_size=16)
  batches = make_classification_dataset(config, batch_size=8)
  # The image's grey level (normalised) says which record it was.
  return [int(round(v / 20)) for b in batches
          for v in (b["images"].numpy()[:, 0, 0, 0] * 58.395 + 123.675)]


def _segmentation(pattern):
  config = SegmentationInputConfig(file_pattern=pattern, is_training=False, image_size=32)
  return [int(round(v / 20)) for b in make_segmentation_dataset(config, batch_size=8)
          for v in (b["images"].numpy()[:, 0, 0, 0] * 58.395 + 123.675)]


def _joint(pattern):
  parser = JointParser(DetectionParser(InputConfig(pattern, is_training=False),
                                       AnchorConfig(image_size=32, min_level=3, max_level=5),
                                       num_classes=4))
  return [int(s) for b in make_joint_dataset(parser, batch_size=8)
          for s in b["source_ids"].numpy()]


@pytest.mark.parametrize("make_record, read", [
    (_classification_record, _classification), (_segmentation_record, _segmentation),
    (_joint_record, _joint)], ids=["classification", "segmentation", "joint"])
def test_a_truncated_shard_is_named_counted_and_skipped(tmp_path, caplog, make_record, read):
  pattern, cut, stop = _write_and_cut(tmp_path, make_record)
  before = record_files.SKIPPED.count
  with caplog.at_level(logging.WARNING):
    seen = read(pattern)
  assert sorted(seen) == [0, 3, 4, 5]  # shard 0's record 0, all of shard 1
  assert record_files.SKIPPED.count == before + 1
  assert record_files.SKIPPED.files[cut] == stop
  assert f"{cut} is unreadable from byte {stop}" in caplog.text


def test_the_summary_writer_of_cut_short_files_is_closed_when_the_run_moves_on(
    tmp_path, monkeypatch):
  """report_to(None) at a run's end (or report_to(another dir)) closes the writer the last
  directory's events went to; the event is in the file."""
  opened, create = [], tf.summary.create_file_writer

  class Writer:
    def __init__(self, directory):
      self.inner, self.closed = create(directory), False
      opened.append(self)

    def as_default(self, step):
      return self.inner.as_default(step=step)

    def flush(self):
      self.inner.flush()

    def close(self):
      self.inner.close()
      self.closed = True

  monkeypatch.setattr(record_files.tf.summary, "create_file_writer", Writer)
  skipped = record_files.SkippedFiles()
  skipped.report_to(str(tmp_path / "a"))
  skipped.record("x.tfrecord", 10, 20)
  skipped.report_to(str(tmp_path / "b"))
  assert len(opened) == 1 and opened[0].closed
  skipped.record("y.tfrecord", 5, 20)
  skipped.report_to(None)
  assert len(opened) == 2 and opened[1].closed
  assert tf.io.gfile.glob(str(tmp_path / "a" / "events.out.tfevents.*"))
