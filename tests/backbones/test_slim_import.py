"""TF-slim checkpoints into detlab: a `tf_slim.nets` network with seeded random weights
(TF1-compat graph, see slim_nets.py), its checkpoint imported into the detlab classifier, gives
the same logits for the same (normalized) images."""
import numpy as np
import pytest

from detlab.backbones import inception_v1, inception_v2, inception_v3
from data_tools.import_slim_checkpoint import import_slim
from detlab.backbones.slim_import import import_slim_checkpoint, slim_num_classes
from detlab.backbones.weight_import import weighted_layers
from detlab.models.efficientdet import efficientdet
from detlab.training.initialize import initialize_from_checkpoint

pytest.importorskip("tf_slim")
from tests.backbones.slim_nets import slim_logits_and_checkpoint  # noqa: E402  pylint: disable=wrong-import-position


def _images(size: int) -> np.ndarray:
  return np.random.default_rng(3).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def v3_slim(tmp_path_factory):
  """(checkpoint prefix, images, slim logits) of a random TF-slim inception_v3 at 75 px
  (slim's and keras' smallest v3 input: 'VALID' stem)."""
  images = _images(75)
  prefix = str(tmp_path_factory.mktemp("slim_v3") / "inception_v3.ckpt")
  return prefix, images, slim_logits_and_checkpoint("inception_v3", images, prefix)


def _v3_with_slim_weights(prefix: str) -> tuple:
  model = inception_v3.inception_v3(include_top=True, num_classes=1001,
                                    input_shape=(75, 75, 3), aux_logits=False)
  return model, import_slim_checkpoint(model, prefix, "inception_v3")


def test_inception_v3_slim_checkpoint_gives_slim_logits(v3_slim) -> None:
  prefix, images, expected = v3_slim
  assert slim_num_classes(prefix, "inception_v3") == 1001
  model, copied = _v3_with_slim_weights(prefix)
  got = model(images, training=False).numpy()
  assert len(copied) == 94  # every conv-BN unit of the stem and the 11 modules
  assert expected.shape == (2, 1001) and np.std(expected) > 0.05
  assert np.max(np.abs(got - expected)) <= 1e-4


@pytest.mark.slow  # builds the 299 classifier, the extractor and a detector: ~1.5 min
def test_import_slim_tool_gives_a_backbone_checkpoint_for_detectors(v3_slim, tmp_path) -> None:
  """python -m data_tools.import_slim_checkpoint's work: slim checkpoint -> backbone
  checkpoint -> train.init_checkpoint (init_mode='backbone') -> the slim weights."""
  prefix = v3_slim[0]
  out = str(tmp_path / "v3_backbone")
  import_slim(prefix, "inception_v3", out)
  detector = efficientdet(inception_v3.inception_v3, num_classes=3, image_size=128)
  table = initialize_from_checkpoint(detector, out, "backbone")
  assert table["backbone"]["new"] == table["backbone"]["skipped"] == 0
  reference = weighted_layers(_v3_with_slim_weights(prefix)[0])
  for name, layer in weighted_layers(detector.backbone).items():
    for value, expected_value in zip(layer.get_weights(), reference[name].get_weights()):
      np.testing.assert_array_equal(value, expected_value, err_msg=name)


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
