"""Mosaic's uncovered canvas follows the backbone's input convention (0 after normalization)."""
import numpy as np
import pytest
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE
from detlab.data import detection_input
from detlab.data.detection_input import AnchorConfig, InputConfig, make_dataset
from detlab.data.mosaic import Mosaic, mosaic_dataset

SIZE = 32


def _thin_examples(seed):
  """Decoded examples 2 x SIZE pixels: resized to 2 x SIZE, they cover two rows each, so the
  canvas's top row (the centre is drawn in SIZE/2..3*SIZE/2) is never covered."""
  image = np.full((2, SIZE, 3), 255, np.uint8)
  example = {"image": image, "boxes": np.array([[0, 0, 2, 8]], np.float32),
             "classes": np.array([1], np.int32), "is_crowd": np.array([False]),
             "areas": np.array([16.0], np.float32), "source_id": "a",
             "height": np.int32(2), "width": np.int32(SIZE)}
  del seed
  return tf.data.Dataset.from_tensors(example).repeat()


@pytest.mark.parametrize("convention", [MINUS_ONE_TO_ONE, IMAGENET_MEAN_STD])
def test_uncovered_canvas_normalizes_to_zero_for_the_pipelines_convention(convention):
  tf.random.set_seed(3)
  stream = mosaic_dataset(_thin_examples, Mosaic(prob=1.0), SIZE, seed=3,
                          convention=convention)
  for out in stream.take(3):
    top_row = out["image"][0]
    np.testing.assert_array_equal(top_row.numpy(),
                                  np.tile(convention.mean_pixel, (2 * SIZE, 1)))
    normalized = convention.normalize(top_row).numpy()
    # uint8 rounding only: 0.5 / std at most (127.5 -> 128 for [-1, 1]; ImageNet's mean colour,
    # the fill whatever the convention before, normalized to -0.03, -0.09, -0.18 there).
    bound = 0.5 / min(convention.std) + 1e-6
    assert np.abs(normalized).max() <= bound


def test_make_dataset_hands_the_parsers_convention_to_mosaic(monkeypatch):
  seen = {}

  def capture(make_decoded, config, size, seed=None, convention=None):
    seen.update(convention=convention, size=size)
    raise StopIteration  # stop before any file is read

  monkeypatch.setattr(detection_input, "mosaic_dataset", capture)
  config = InputConfig("unused-*.tfrecord", is_training=True, mosaic=Mosaic(prob=1.0))
  with pytest.raises(StopIteration):
    make_dataset(config, AnchorConfig(image_size=128), 1, 2, convention=MINUS_ONE_TO_ONE)
  assert seen == {"convention": MINUS_ONE_TO_ONE, "size": 128}


def test_to_uint8_inverts_normalize_with_rounding_and_clipping():
  pixels = np.array([[[0, 127, 255], [1, 128, 254]]], np.uint8)
  for convention, middle in ((MINUS_ONE_TO_ONE, 128), (IMAGENET_MEAN_STD, 116)):
    normalized = convention.normalize(pixels)
    np.testing.assert_array_equal(convention.to_uint8(normalized), pixels)
    # Out of range clips; 0 (the mean of channel 1) rounds to the nearest uint8.
    far = np.array([[-5.0, 0.0, 5.0]], np.float32)
    np.testing.assert_array_equal(convention.to_uint8(far), [[0, middle, 255]])
