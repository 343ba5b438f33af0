"""TFDS builders as a source, offline with tfds.testing.mock_data (random examples)."""
import numpy as np
import pytest
import tensorflow as tf

tfds = pytest.importorskip("tensorflow_datasets")

from detlab.data import tfds_source  # noqa: E402
from detlab.data.detection_input import InputConfig, make_dataset  # noqa: E402
from detlab.detection.anchors import AnchorConfig  # noqa: E402


@pytest.mark.parametrize("name", ["voc/2007", "coco/2017"])
def test_tfds_examples_become_decode_example_dicts(name):
  with tfds.testing.mock_data(num_examples=3):
    raw = list(tfds.load(name, split="train").take(3))
    decoded = list(tfds_source.decoded_dataset(name, "train").take(3))
  assert len(decoded) == 3
  for example, data in zip(raw, decoded):
    image = example["image"].numpy()
    height, width = image.shape[:2]
    np.testing.assert_array_equal(data["image"].numpy(), image)
    assert (int(data["height"]), int(data["width"])) == (height, width)
    objects = example["objects"]
    # TFDS labels are 0-based; detlab's category id is label + 1 (class index = id - 1).
    np.testing.assert_array_equal(data["classes"].numpy(), objects["label"].numpy() + 1)
    np.testing.assert_allclose(data["boxes"].numpy(),
                               objects["bbox"].numpy() * [height, width, height, width],
                               rtol=1e-6)
    crowd = objects["is_crowd"] if "is_crowd" in objects else objects["is_difficult"]
    np.testing.assert_array_equal(data["is_crowd"].numpy(), crowd.numpy())
    assert data["boxes"].dtype == tf.float32 and data["classes"].dtype == tf.int32
    if "image/id" in example:
      assert data["source_id"].numpy().decode() == str(int(example["image/id"]))


def test_label_map_comes_from_the_class_label_feature(tmp_path):
  with tfds.testing.mock_data(num_examples=1):
    builder = tfds_source.load_builder("voc/2007")
    mapping = tfds_source.write_label_map(builder, str(tmp_path / "label_map.json"))
  assert mapping[1] == "aeroplane" and mapping[20] == "tvmonitor" and len(mapping) == 20
  assert (tmp_path / "label_map.json").read_text().count('"') == 80


def test_builder_without_detection_features_is_refused():
  with tfds.testing.mock_data(num_examples=1):
    with pytest.raises(ValueError, match="objects/bbox"):
      tfds_source.load_builder("mnist")


def _voc_like_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
  """Consistent VOC-layout examples (the random mock draws each object field's length
  independently, which no real data set does)."""
  del self, split, decoders, read_config, shuffle_files

  def examples():
    rng = np.random.RandomState(0)
    for i in range(4):
      count = i + 1
      corner = rng.uniform(0.0, 0.5, (count, 2))
      yield {"image": rng.randint(0, 255, (60 + 10 * i, 80, 3)).astype(np.uint8),
             "image/filename": f"{i:06d}.jpg",
             "objects": {"bbox": np.concatenate([corner, corner + 0.4], -1).astype(np.float32),
                         "label": np.arange(count, dtype=np.int64) * 5,
                         "is_difficult": np.arange(count) == 0}}

  spec = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
          "image/filename": tf.TensorSpec([], tf.string),
          "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32),
                      "label": tf.TensorSpec([None], tf.int64),
                      "is_difficult": tf.TensorSpec([None], tf.bool)}}
  return tf.data.Dataset.from_generator(examples, output_signature=spec)


def test_make_dataset_reads_tfds_for_training_and_evaluation():
  anchors = AnchorConfig(image_size=128)
  with tfds.testing.mock_data(as_dataset_fn=_voc_like_as_dataset):
    train = InputConfig(tfds_name="voc/2007", tfds_split="train", is_training=True,
                        aug_scale_min=0.5, aug_scale_max=1.5, shuffle_buffer=4)
    batch = next(iter(make_dataset(train, anchors, num_classes=20, batch_size=2, seed=0)))
    assert batch["images"].shape == (2, 128, 128, 3)
    assert batch["cls_targets"].shape == (2, anchors.num_anchors)
    assert (batch["cls_targets"].numpy() >= 0).any()
    evaluation = InputConfig(tfds_name="voc/2007", tfds_split="test", max_instances=10)
    batch = next(iter(make_dataset(evaluation, anchors, num_classes=20, batch_size=4)))
  # Padded to the batch's largest box count (4), not to max_instances.
  assert batch["gt_boxes"].shape == (4, 4, 4) and batch["image_info"].shape == (4, 4, 2)
  assert [s.decode() for s in batch["source_ids"].numpy()] == ["000000", "000001", "000002",
                                                               "000003"]
  # Example 3 (90 x 80 pixels): 4 boxes, labels 0, 5, 10, 15 -> class index = label (id - 1).
  np.testing.assert_array_equal(batch["gt_classes"].numpy()[3], [0, 5, 10, 15])
  np.testing.assert_array_equal(batch["gt_classes"].numpy()[0], [0, -1, -1, -1])
  np.testing.assert_array_equal(batch["gt_is_crowd"].numpy()[3, :4], [1, 0, 0, 0])
  np.testing.assert_array_equal(batch["image_info"].numpy()[3, 0], [90, 80])
  boxes = batch["gt_boxes"].numpy()[3, :4]
  np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 0.4 * 90, rtol=1e-5)
  np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 0.4 * 80, rtol=1e-5)
