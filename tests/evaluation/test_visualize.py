"""The PNG panels show the pixels the data set holds, whatever the backbone's input convention."""
import numpy as np
import pytest

from detlab.backbones.conventions import IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE, MINUS_ONE_TO_ONE_V2
from detlab.evaluation import visualize


@pytest.mark.parametrize("convention", [IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE,
                                        MINUS_ONE_TO_ONE_V2])
def test_denormalize_inverts_the_backbones_normalization(convention):
  pixels = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  normalized = convention.normalize(pixels).numpy()
  np.testing.assert_array_equal(visualize.denormalize(normalized, convention), pixels)


def test_inception_images_drawn_with_imagenet_statistics_would_be_wrong():
  """The case the convention argument exists for: [-1, 1] inputs un-normalized with
  ImageNet's mean/std give other colours."""
  pixels = np.full((1, 2, 2, 3), 200, np.uint8)
  normalized = MINUS_ONE_TO_ONE.normalize(pixels).numpy()
  assert np.abs(visualize.denormalize(normalized).astype(int) - 200).max() > 50
