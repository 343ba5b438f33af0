"""TFDS splits prepared on disk (a tiny builder defined here, no network): a truncated shard is
named, counted and skipped as detlab's own records are, in the detection and classification
inputs; and the training shuffle holds encoded examples, decoded after it, giving the same
examples in the same order as shuffling decoded ones did, with a far smaller checkpoint."""
import glob
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

tfds = pytest.importorskip("tensorflow_datasets")

from detlab.data import record_files, tfds_source  # noqa: E402
from detlab.data.classification_input import (ClassificationInputConfig,  # noqa: E402
                                              make_classification_dataset)
from detlab.data.detection_input import InputConfig, make_dataset, source_dataset  # noqa: E402
from detlab.detection.anchors import AnchorConfig  # noqa: E402

NAME, EXAMPLES, SIDE = "detlab_tiny_shapes_tfds", 8, 96


def _image(i: int) -> np.ndarray:
  """Linear ramps: PNG's row filters make them a few hundred bytes; decoded 27 KB, which the
  checkpoint writer's byte-level compression does not shrink much."""
  y, x = np.mgrid[:SIDE, :SIDE]
  return np.stack([(3 * x + 5 * y + 20 * i + 40 * c) % 256 for c in range(3)],
                  -1).astype(np.uint8)


class DetlabTinyShapesTfds(tfds.core.GeneratorBasedBuilder):
  """Example i: `_image(i)`, image/id i, label i % 3, one box."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "image/id": tf.int64,
        "label": tfds.features.ClassLabel(num_classes=3),
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "label": tfds.features.ClassLabel(num_classes=3)})}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(EXAMPLES):
      yield i, {"image": _image(i), "image/id": i,
                "label": i % 3,
                "objects": {"bbox": np.array([[0.1, 0.2, 0.6, 0.7]], np.float32),
                            "label": [i % 3]}}


def _prepare(data_dir: str) -> list[str]:
  builder = DetlabTinyShapesTfds(data_dir=data_dir, file_format="tfrecord")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=2))
  return sorted(glob.glob(os.path.join(data_dir, NAME, "1.0.0", "*.tfrecord-*")))


@pytest.fixture(scope="module")
def intact_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp("tfds_intact"))
  assert len(_prepare(data_dir)) == 2
  return data_dir


@pytest.fixture(scope="module")
def cut_dir(tmp_path_factory):
  """The split with shard 0 cut inside its record 1: (data_dir, cut file, byte where reading
  stops, the image ids that survive)."""
  data_dir = str(tmp_path_factory.mktemp("tfds_cut"))
  files = _prepare(data_dir)
  features = tfds_source.load_builder(NAME, data_dir).info.features
  ids = [[int(features.deserialize_example(r)["image/id"]) for r in tf.data.TFRecordDataset(f)]
         for f in files]  # each shard's image ids, before the cut
  data = open(files[0], "rb").read()
  (length,) = struct.unpack("<Q", data[:8])
  stop = 16 + length
  open(files[0], "wb").write(data[:stop + 30])
  return data_dir, files[0], stop, sorted(ids[0][:1] + ids[1])


def test_tfds_reader_stops_at_a_truncated_shard(cut_dir):
  """Why detlab reads the files itself: TFDS' own dataset fails there (DataLossError at the
  cut record, or FailedPreconditionError at the split's end when the reader stops quietly)."""
  data_dir, _, _, survivors = cut_dir
  builder = tfds.builder(NAME, data_dir=data_dir)
  with pytest.raises((tf.errors.DataLossError, tf.errors.FailedPreconditionError)):
    list(builder.as_dataset(split="train"))
  assert len(survivors) < EXAMPLES


def test_detection_input_skips_a_truncated_tfds_shard(cut_dir, caplog):
  data_dir, cut, stop, survivors = cut_dir
  config = InputConfig(tfds_name=NAME, tfds_split="train", tfds_data_dir=data_dir)
  before = record_files.SKIPPED.count
  with caplog.at_level("WARNING"):
    batches = list(make_dataset(config, AnchorConfig(image_size=32, min_level=3, max_level=5),
                                num_classes=3, batch_size=4))
  assert sorted(int(s) for b in batches for s in b["source_ids"].numpy()) == survivors
  assert record_files.SKIPPED.count == before + 1 and record_files.SKIPPED.files[cut] == stop
  assert f"{cut} is unreadable from byte {stop}" in caplog.text


def test_classification_input_skips_a_truncated_tfds_shard(cut_dir):
  data_dir, cut, stop, survivors = cut_dir
  config = ClassificationInputConfig(tfds_name=NAME, tfds_data_dir=data_dir, is_training=False,
                                     image_size=16)
  before = record_files.SKIPPED.count
  batches = list(make_classification_dataset(config, batch_size=4))
  labels = [int(v) for b in batches for v in b["labels"].numpy()]
  assert sorted(labels) == sorted(i % 3 for i in survivors)
  assert record_files.SKIPPED.count == before + 1 and record_files.SKIPPED.files[cut] == stop


def _checkpoint_bytes(iterator, directory) -> int:
  path = tf.train.Checkpoint(iterator=iterator).write(os.path.join(directory, "ckpt"))
  return sum(os.path.getsize(f) for f in glob.glob(path + "*"))


def _shuffle_of(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """The shuffle step upstream of `dataset` (tf.data's own links between steps)."""
  while "ShuffleDataset" not in type(dataset).__name__:
    dataset = dataset._input_dataset  # pylint: disable=protected-access
  return dataset


def test_the_training_shuffle_holds_encoded_examples(intact_dir, tmp_path):
  buffer, seed = 64, 5  # 8 passes over the 8 examples
  config = InputConfig(tfds_name=NAME, tfds_split="train", tfds_data_dir=intact_dir,
                       is_training=True, shuffle_buffer=buffer)
  options = tf.data.Options()  # as the trainer saves iterators (the record reader's py_func)
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  new = source_dataset(config, seed=seed)
  assert _shuffle_of(new).element_spec == tf.TensorSpec([], tf.string)  # serialized examples
  # What the TFDS source did before: decode, then shuffle the decoded images.
  old = tfds_source.decoded_dataset(NAME, "train", intact_dir, is_training=True, seed=seed)
  old = old.repeat().shuffle(buffer, seed=seed)
  assert _shuffle_of(old).element_spec["image"].dtype == tf.uint8
  new_it, old_it = iter(new.with_options(options)), iter(old.with_options(options))
  for _ in range(2 * EXAMPLES + 3):  # more than two epochs: the same examples, in order
    a, b = next(new_it), next(old_it)
    assert a["source_id"].numpy() == b["source_id"].numpy()
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
  new_bytes = _checkpoint_bytes(new_it, str(tmp_path / "new"))
  old_bytes = _checkpoint_bytes(old_it, str(tmp_path / "old"))
  print("checkpoint bytes: encoded buffer", new_bytes, "decoded buffer", old_bytes)
  assert new_bytes * 2.5 < old_bytes, (new_bytes, old_bytes)  # 76 KB vs 246 KB when written
