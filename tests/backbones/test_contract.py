"""The backbone contract, checked once for every entry of `detlab.backbones.BACKBONES`.

A registered builder called with no arguments returns a tf_keras Model whose output is
`{str(level): [B, ceil(S/2^l), ceil(S/2^l), C_l]}` for levels "2".."5" (detlab's backbone
contract, WORKSPACE.md), C_l the CHANNELS table below (the family test files point here).
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
                    "efficientnetv2_xl",
                    # Lite0 and Lite4 (unscaled and most scaled) cover the Lite builder; every
                    # Lite's count is asserted in tests/models/test_efficientdet_lite.py.
                    "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3"}
NAMES = sorted(set(BACKBONES) - SKIPPED_FOR_TIME)
# Channels at levels 2..5: EfficientNet V1/V2 from keras apps' block tables and rounding (the
# backbone channels EfficientDet lists), the others from their papers / TF-slim / keras apps.
CHANNELS = {
    "efficientnet_b0": (24, 40, 112, 320), "efficientnet_b1": (24, 40, 112, 320),
    "efficientnet_b2": (24, 48, 120, 352), "efficientnet_b3": (32, 48, 136, 384),
    "efficientnet_b4": (32, 56, 160, 448), "efficientnet_b5": (40, 64, 176, 512),
    "efficientnet_lite0": (24, 40, 112, 320), "efficientnet_lite4": (32, 56, 160, 448),
    "efficientnetv2_b0": (32, 48, 112, 192), "efficientnetv2_b1": (32, 48, 112, 192),
    "efficientnetv2_b2": (32, 56, 120, 208), "efficientnetv2_b3": (40, 56, 136, 232),
    "efficientnetv2_s": (48, 64, 160, 256),
    "inception_v1": (192, 480, 832, 1024), "inception_v2": (192, 320, 576, 1024),
    "inception_v3": (192, 288, 768, 2048), "inception_v4": (192, 384, 1024, 1536),
    "inception_resnet_v1": (192, 256, 896, 1792), "inception_resnet_v2": (192, 320, 1088, 1536),
    "xception": (128, 256, 728, 2048),
}


@pytest.fixture(scope="module", params=NAMES)
def backbone(request, built_backbone):
  """(name, builder, model): each registered name built once per test process (the session
  cache of tests/conftest.py; these tests only read the model) and shared by the tests below."""
  return request.param, BACKBONES[request.param], built_backbone(request.param)


def _model_for_size(name: str, model: keras.Model, size: int, built_backbone) -> keras.Model:
  if model.input_shape[1] is None and model.input_shape[2] is None:
    return model
  return built_backbone(name, size)


def _check_levels(name: str, model: keras.Model, size: int, built_backbone) -> None:
  model = _model_for_size(name, model, size, built_backbone)
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
  name, _, model = backbone
  assert isinstance(model, keras.Model)
  assert isinstance(model.output, dict)
  assert sorted(model.output) == ["2", "3", "4", "5"]
  assert all(isinstance(key, str) for key in model.output)
  for level in LEVELS:
    channels = model.output[str(level)].shape[-1]
    assert isinstance(channels, int) and channels > 0, level
  assert tuple(model.output[str(l)].shape[-1] for l in LEVELS) == CHANNELS[name]
  assert model.count_params() > 0


def test_level_sizes_for_size_divisible_by_32(backbone, built_backbone) -> None:
  name, _, model = backbone
  _check_levels(name, model, 64, built_backbone)


def test_level_sizes_for_odd_size(backbone, built_backbone) -> None:
  name, builder, model = backbone
  if not getattr(builder, "odd_input_sizes", True):
    pytest.skip(f"{builder.__name__} declares odd_input_sizes = False")
  _check_levels(name, model, 65, built_backbone)


def test_builders_are_gin_registered() -> None:
  """Every table entry can be referenced from a .gin file by its key."""
  for name in BACKBONES:
    gin.clear_config()
    gin.parse_config(f"BACKBONE = @{name}")  # raises for an unknown configurable
    assert gin.query_parameter("%BACKBONE").configurable.wrapped is BACKBONES[name], name
  gin.clear_config()
