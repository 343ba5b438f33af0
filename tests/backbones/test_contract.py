"""The backbone contract, checked once for every entry of `detlab.backbones.BACKBONES`.

A registered builder called with no arguments returns a tf_keras Model whose output is
`{str(level): [B, ceil(S/2^l), ceil(S/2^l), C_l]}` for levels "2".."5" (detlab's backbone contract, WORKSPACE.md).
Checked at S = 64 (divisible by 32) and S = 65 (odd). A family whose contract holds only for
S divisible by 32 (e.g. VALID-padded stems) says so with the builder attribute
`odd_input_sizes = False`; its odd-size check is then skipped. A builder whose model has a static
input size is rebuilt with `input_shape=(S, S, 3)` for each S.
"""
import math

import gin
import numpy as np
import pytest
import tf_keras as keras

from detlab.backbones import BACKBONES

LEVELS = range(2, 6)
# Left out for time only (10-40 s each to build on 2 shared CPU cores): the largest variants
# share their family's builder and block code with the smaller registered variants checked
# here; their parameter counts are asserted in their family's test.
SKIPPED_FOR_TIME = {"efficientnet_b6", "efficientnet_b7", "efficientnetv2_m", "efficientnetv2_l",
                    "efficientnetv2_xl"}
NAMES = sorted(set(BACKBONES) - SKIPPED_FOR_TIME)


@pytest.fixture(scope="module", params=NAMES)
def backbone(request):
  """(builder, model) built once per registered name and shared by the tests below."""
  keras.backend.clear_session()
  builder = BACKBONES[request.param]
  yield builder, builder()
  keras.backend.clear_session()


def _model_for_size(builder, model: keras.Model, size: int) -> keras.Model:
  if model.input_shape[1] is None and model.input_shape[2] is None:
    return model
  return builder(input_shape=(size, size, 3))


def _check_levels(builder, model: keras.Model, size: int) -> None:
  model = _model_for_size(builder, model, size)
  images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  outputs = model(images, training=False)
  assert sorted(outputs) == [str(l) for l in LEVELS]
  for level in LEVELS:
    feature = outputs[str(level)]
    channels = model.output[str(level)].shape[-1]
    side = math.ceil(size / 2**level)
    assert tuple(feature.shape) == (2, side, side, channels), (level, size)
    assert feature.dtype == np.float32
    assert np.all(np.isfinite(feature.numpy()))


def test_output_keys_channels_and_params(backbone) -> None:
  builder, model = backbone
  assert isinstance(model, keras.Model)
  assert isinstance(model.output, dict)
  assert sorted(model.output) == ["2", "3", "4", "5"]
  assert all(isinstance(key, str) for key in model.output)
  for level in LEVELS:
    channels = model.output[str(level)].shape[-1]
    assert isinstance(channels, int) and channels > 0, level
  assert model.count_params() > 0


def test_level_sizes_for_size_divisible_by_32(backbone) -> None:
  builder, model = backbone
  _check_levels(builder, model, 64)


def test_level_sizes_for_odd_size(backbone) -> None:
  builder, model = backbone
  if not getattr(builder, "odd_input_sizes", True):
    pytest.skip(f"{builder.__name__} declares odd_input_sizes = False")
  _check_levels(builder, model, 65)


def test_builders_are_gin_registered() -> None:
  """Every table entry can be referenced from a .gin file by its key."""
  for name in BACKBONES:
    gin.clear_config()
    gin.parse_config(f"BACKBONE = @{name}")  # raises for an unknown configurable
    assert gin.query_parameter("%BACKBONE").configurable.wrapped is BACKBONES[name], name
  gin.clear_config()
