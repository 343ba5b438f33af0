"""Reading TFRecord files so that one truncated or corrupt record never stops a run.

A TFRecord reader raises DataLossError at a truncated or corrupt record, at a random step of
a long run, and a resumed iterator replays it: a crash loop. Here each file is read with
`ignore_errors`, which ends that file's stream at the bad record (TFRecord framing cannot be
resynchronised past it), and the bytes read are compared with the file's size at its end: a
file cut short is logged with its name and the byte where reading stopped, counted in
`SKIPPED` and, once a run has called `report_to(dir)`, written to TensorBoard there
("data/files_cut_short", and the file name as text). The rest of that file is skipped, each
time the file is read (every epoch); the others go on. Fix the file with the converter.
Every TFRecord input reads through `sharded_records`: detection, segmentation, joint,
classification, and TFDS splits stored as TFRecord files (tfds_source.encoded_split).
"""
import threading

from absl import logging
import numpy as np
import tensorflow as tf

_FRAMING_BYTES = 16  # per record: uint64 length, its CRC32C, the data, the data's CRC32C


class SkippedFiles:
  """What was cut short: `count` (every time a file was), `files` {path: first bad byte}."""

  def __init__(self):
    self._lock = threading.Lock()
    self.count, self.files, self.summary_dir = 0, {}, None
    self._writer = None

  def report_to(self, summary_dir: str | None) -> None:
    """TensorBoard events for cut-short files go to `summary_dir` (None: log only); the
    writer of the previous directory, if one was opened, is closed (a run calls
    report_to(None) on exit)."""
    with self._lock:
      previous, self.summary_dir, self._writer = self._writer, summary_dir, None
    if previous is not None:
      previous.close()

  def record(self, path: str, offset: int, size: int) -> None:
    with self._lock:
      self.count += 1
      first = path not in self.files
      self.files.setdefault(path, offset)
      count, summary_dir = self.count, self.summary_dir
      if summary_dir and self._writer is None:
        self._writer = tf.summary.create_file_writer(summary_dir)
      writer = self._writer
    message = (f"Corrupt or truncated TFRecord: {path} is unreadable from byte {offset} of "
               f"{size}; the rest of that file is skipped{'' if first else ' (again)'} "
               f"({count} time(s) a file was cut short in this run). Re-create it with its "
               "converter (data_tools.create_*_tfrecord; `tfds build` for a TFDS split).")
    logging.warning(message)
    if writer is not None:
      with writer.as_default(step=count):  # x axis: the n-th time a file was cut short
        tf.summary.scalar("data/files_cut_short", count)
        tf.summary.text("data/file_cut_short", message)
      writer.flush()


SKIPPED = SkippedFiles()


def file_sizes(files: list[str]) -> np.ndarray:
  """int64 byte sizes (tf.io.gfile: local, gs://, ram://) that reading should reach."""
  return np.array([tf.io.gfile.stat(path).length for path in files], np.int64)


def _report(path, offset, size):
  SKIPPED.record(path.numpy().decode(), int(offset.numpy()), int(size.numpy()))
  return True


def records_of_file(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
  """The serialized records of one TFRecord file of `size` bytes, up to the first bad one;
  a file cut short is reported (SKIPPED) when its end is reached."""
  size = tf.cast(size, tf.int64)
  records = tf.data.TFRecordDataset(path).ignore_errors().map(lambda r: (r, False))
  end = tf.data.Dataset.from_tensors((tf.constant(b""), True))  # marks the file's end

  def count_bytes(consumed, item):
    record, is_end = item
    length = tf.cast(tf.strings.length(record), tf.int64) + _FRAMING_BYTES
    consumed += tf.where(is_end, tf.constant(0, tf.int64), length)
    return consumed, (record, is_end, consumed)

  def keep(record, is_end, consumed):
    del record
    cut_short = tf.logical_and(is_end, consumed < size)
    reported = tf.cond(cut_short, lambda: tf.py_function(_report, [path, consumed, size],
                                                         tf.bool),
                       lambda: tf.constant(True))
    with tf.control_dependencies([reported]):
      return tf.logical_not(is_end)

  return (records.concatenate(end)
          .scan(tf.constant(0, tf.int64), count_bytes)
          .filter(keep)
          .map(lambda record, is_end, consumed: record))


def sharded_records(files: list[str], input_context=None, shuffle: bool = False,
                    seed: int | None = None, deterministic: bool = True,
                    ranges: list[tuple[int, int]] | None = None) -> tf.data.Dataset:
  """Serialized records of `files`: sharded per input pipeline, file order shuffled when
  `shuffle`, interleaved; a truncated/corrupt record ends its file's stream, logged and
  counted (`records_of_file`). Shared by every TFRecord pipeline (detection, segmentation,
  joint, classification, and TFDS splits stored as TFRecords: tfds_source.encoded_split).

  ranges: optional (skip, take) per file (a TFDS split slice): only records skip ..
  skip + take - 1 of that file (take -1: to its end)."""
  if ranges is None:
    ranges = [(0, -1)] * len(files)
  skips, takes = (np.array(column, np.int64) for column in zip(*ranges)) if files else ([], [])
  dataset = tf.data.Dataset.from_tensor_slices((files, file_sizes(files), skips, takes))
  if input_context and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed)
  return dataset.interleave(
      lambda path, size, skip, take: records_of_file(path, size).skip(skip).take(take),
      cycle_length=min(8, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic)
