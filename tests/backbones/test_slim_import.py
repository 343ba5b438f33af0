"""TF-slim checkpoints into detlab: a `tf_slim.nets` network with seeded random weights
(TF1-compat graph, see slim_nets.py), its checkpoint imported into the detlab classifier, gives
the same logits for the same (normalized) images."""
import numpy as np
import pytest

from detlab.backbones import inception_v1, inception_v2, inception_v3
from detlab.backbones.slim_import import import_slim_checkpoint, slim_num_classes

pytest.importorskip("tf_slim")
from tests.backbones.slim_nets import slim_logits_and_checkpoint  # noqa: E402  pylint: disable=wrong-import-position


def _images(size: int) -> np.ndarray:
  return np.random.default_rng(3).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def test_inception_v3_slim_checkpoint_gives_slim_logits(tmp_path) -> None:
  size = 75  # slim's and keras' smallest v3 input ('VALID' stem)
  images = _images(size)
  prefix = str(tmp_path / "inception_v3.ckpt")
  expected = slim_logits_and_checkpoint("inception_v3", images, prefix)
  assert slim_num_classes(prefix, "inception_v3") == 1001
  model = inception_v3.inception_v3(include_top=True, num_classes=1001,
                                    input_shape=(size, size, 3), aux_logits=False)
  before = model(images, training=False).numpy()
  copied = import_slim_checkpoint(model, prefix, "inception_v3")
  got = model(images, training=False).numpy()
  assert len(copied) == 94  # every conv-BN unit of the stem and the 11 modules
  assert expected.shape == (2, 1001) and np.std(expected) > 0.05
  assert np.max(np.abs(before - expected)) > 1e-2
  assert np.max(np.abs(got - expected)) <= 1e-4


def test_bn_inception_slim_checkpoint_gives_slim_logits(tmp_path) -> None:
  """TF-slim's inception_v2 = BN-Inception with a separable 7x7 first layer (bias, no BN)."""
  size = 64
  images = _images(size)
  prefix = str(tmp_path / "inception_v2.ckpt")
  expected = slim_logits_and_checkpoint("inception_v2", images, prefix)
  model = inception_v2.inception_v2(include_top=True, num_classes=1001,
                                    input_shape=(size, size, 3), stem="separable")
  copied = import_slim_checkpoint(model, prefix, "inception_v2")
  got = model(images, training=False).numpy()
  assert len(copied) == 1 + 2 + 8 * 7 + 2 * 5  # stem, conv2, 8 modules, 2 reductions
  assert np.std(expected) > 0.05
  assert np.max(np.abs(got - expected)) <= 1e-4
  # The paper's stem (detlab's default) is refused with the fix.
  with pytest.raises(ValueError, match="stem='separable'"):
    import_slim_checkpoint(inception_v2.inception_v2(include_top=True, num_classes=1001,
                                                     input_shape=(size, size, 3)),
                           prefix, "inception_v2")


def test_googlenet_slim_checkpoint_gives_slim_logits(tmp_path) -> None:
  """TF-slim's inception_v1 (its 7x7 VALID logits pool needs the 224 input): BN after every
  conv, no LRN, 3x3 third branch, 2x2/2 pool before 5a -- detlab's variant='slim'."""
  size = 224
  images = _images(size)[:1]
  prefix = str(tmp_path / "inception_v1.ckpt")
  expected = slim_logits_and_checkpoint("inception_v1", images, prefix)
  model = inception_v1.inception_v1(include_top=True, num_classes=1001, variant="slim")
  copied = import_slim_checkpoint(model, prefix, "inception_v1")
  got = model(images, training=False).numpy()
  assert len(copied) == 3 + 9 * 6  # stem convs, 9 modules x 6 convs
  assert np.std(expected) > 0.05
  assert np.max(np.abs(got - expected)) <= 1e-4
  # The paper's GoogLeNet (no BN) cannot take TF-slim's weights: refused with the fix.
  with pytest.raises(ValueError, match="TF-slim variant"):
    import_slim_checkpoint(inception_v1.inception_v1(include_top=True, num_classes=1001),
                           prefix, "inception_v1")
