"""TFDS builders with segmentation masks, offline with tfds.testing.mock_data."""
import numpy as np
import pytest
import tensorflow as tf

tfds = pytest.importorskip("tensorflow_datasets")

from detlab.data import tfds_segmentation  # noqa: E402
from detlab.data.segmentation_input import SegmentationInputConfig, make_dataset  # noqa: E402


@pytest.mark.parametrize("name", ["oxford_iiit_pet", "scene_parse150"])
def test_masks_are_mapped_to_class_ids_with_255_ignore(name):
  spec = tfds_segmentation.spec_for(name)
  with tfds.testing.mock_data(num_examples=2):
    raw = list(tfds.load(name, split="train").take(2))
    decoded = list(tfds_segmentation.decoded_dataset(name, "train").take(2))
  for example, data in zip(raw, decoded):
    np.testing.assert_array_equal(data["image"].numpy(), example[spec.image_key].numpy())
    mask = example[spec.mask_key].numpy()[..., 0].astype(int)
    if name == "oxford_iiit_pet":  # trimap: 1 pet, 2 background, 3 border
      expected = np.select([mask == 1, mask == 2], [1, 0], 255)
    else:  # 0 "other" ignored, 1..150 -> 0..149
      expected = np.where((mask >= 1) & (mask <= 150), mask - 1, 255)
    np.testing.assert_array_equal(data["labels"].numpy(), expected)
    assert data["labels"].dtype == tf.uint8


def test_cityscapes_label_ids_become_the_19_train_ids():
  spec = tfds_segmentation.spec_for("cityscapes/semantic_segmentation")
  table = spec.lookup()
  assert table[7] == 0 and table[26] == 13 and table[33] == 18  # road, car, bicycle
  assert table[0] == 255 and table[6] == 255 and table[34] == 255  # unlabeled, ground, beyond
  assert sorted(set(table.tolist()) - {255}) == list(range(19))


def test_input_pipeline_reads_a_tfds_builder():
  config = SegmentationInputConfig(tfds_name="oxford_iiit_pet", tfds_split="train",
                                   is_training=False, image_size=32)
  with tfds.testing.mock_data(num_examples=2):
    batch = next(iter(make_dataset(config, batch_size=2)))
  assert tuple(batch["images"].shape) == (2, 32, 32, 3)
  assert set(np.unique(batch["original_labels"].numpy())) <= {0, 1, 255}


def test_unknown_builder_lists_the_known_ones():
  with pytest.raises(ValueError, match="oxford_iiit_pet"):
    tfds_segmentation.spec_for("voc/2012")
