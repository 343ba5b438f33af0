"""EfficientNet V1 (B0-B7) and V2 (B0-B3, S, M, L; XL in tests/layers/test_functional.py):
sizes and hyper-parameters.

Parameter counts are for the 1000-class classifier; the keras-apps counts exclude keras' input
`Normalization` layer (V1: 7 numbers), which detlab does not have. The keras apps source
(`tf_keras.src.applications.efficientnet_v2`) is the oracle for the V2 tables and rounding.
Models are built at 32 px: parameter counts do not depend on the image size.
"""
import math

import pytest
import tf_keras as keras
from tf_keras.src.applications import efficientnet_v2 as keras_v2

from detlab.backbones import efficientnet, efficientnet_v2

V1_COUNTS = {"b0": 5_330_564, "b1": 7_856_232, "b2": 9_177_562, "b3": 12_320_528,
             "b4": 19_466_816, "b5": 30_562_520, "b6": 43_265_136, "b7": 66_658_680}
V2_COUNTS = {"b0": 7_200_312, "b1": 8_212_124, "b2": 10_178_374, "b3": 14_467_622,
             "s": 21_612_360, "m": 54_431_388, "l": 119_027_848}
# Classifier dropout: V1 paper / reference code; V2 reference code `efficientnetv2_params`.
V1_DROPOUT = {"b0": 0.2, "b1": 0.2, "b2": 0.3, "b3": 0.3, "b4": 0.4, "b5": 0.4, "b6": 0.5,
              "b7": 0.5}
V2_DROPOUT = {"b0": 0.2, "b1": 0.2, "b2": 0.3, "b3": 0.3, "s": 0.2, "m": 0.3, "l": 0.4}
SMALL = (32, 32, 3)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
  yield
  keras.backend.clear_session()


@pytest.mark.parametrize("variant", list(V1_COUNTS))
def test_v1_param_count_and_dropout(variant: str) -> None:
  model = efficientnet.efficientnet(variant, include_top=True, input_shape=SMALL)
  assert model.count_params() == V1_COUNTS[variant]
  assert model.get_layer("top_dropout").rate == V1_DROPOUT[variant]


@pytest.mark.parametrize("variant", list(V2_COUNTS))
def test_v2_param_count_and_dropout(variant: str) -> None:
  model = efficientnet_v2.efficientnet_v2(variant, include_top=True, input_shape=SMALL)
  assert model.count_params() == V2_COUNTS[variant]
  assert model.get_layer("top_dropout").rate == V2_DROPOUT[variant]


# V2-XL is built once in the suite, in a fresh process at Python's default recursion limit
# (tests/layers/test_functional.py::test_deepest_builders_in_a_fresh_process_at_the_default_limit):
# its parameter count within 1 % of the paper's 208M, dropout 0.4 and stage 6's block names
# (32 blocks: a..z, then aa..af) are asserted there.
def test_block_names_go_past_z_as_v2_xl_needs() -> None:
  assert [efficientnet_v2.block_prefix(6, i) for i in (0, 25, 26, 31)] == [
      "block6a_", "block6z_", "block6aa_", "block6af_"]


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "s", "m", "l"])
def test_v2_block_tables_equal_keras_apps(variant: str) -> None:
  ours = efficientnet_v2.V2_VARIANTS[variant].blocks
  theirs = keras_v2.DEFAULT_BLOCKS_ARGS[f"efficientnetv2-{variant}"]
  assert len(ours) == len(theirs)
  for spec, args in zip(ours, theirs):
    assert (spec.kernel_size, spec.repeats, spec.filters_in, spec.filters_out,
            spec.expand_ratio, spec.strides, spec.se_ratio, spec.fused) == (
                args["kernel_size"], args["num_repeat"], args["input_filters"],
                args["output_filters"], args["expand_ratio"], args["strides"],
                args["se_ratio"], args["conv_type"] == 1)


def test_v2_tables_fused_early_mbconv_late_all_3x3() -> None:
  for variant, spec in efficientnet_v2.V2_VARIANTS.items():
    fused = [b.fused for b in spec.blocks]
    assert fused[:3] == [True] * 3 and not any(fused[3:]), variant
    assert {b.kernel_size for b in spec.blocks} == {3}, variant
    assert [b.se_ratio for b in spec.blocks] == [0.0] * 3 + [0.25] * (len(fused) - 3), variant


def test_v2_round_filters_matches_keras() -> None:
  for filters in (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 1280):
    for width in (0.25, 0.5, 1.0, 1.1, 1.2, 1.4, 1.6, 2.0):
      assert efficientnet_v2.round_filters_v2(filters, width) == keras_v2.round_filters(
          filters, width, min_depth=8, depth_divisor=8), (filters, width)
  # No V1-style "+divisor when rounded down by > 10 %": 20 * 1.0 -> 24 either way, but
  # 36 * 0.5 = 18 -> 16 in V2 (V1 bumps 16 < 0.9 * 18 to 24).
  assert efficientnet_v2.round_filters_v2(36, 0.5) == 16
  assert efficientnet.round_filters(36, 0.5) == 24
  assert efficientnet_v2.round_filters_v2(4, 0.5) == 8  # min_depth floor


def _blocks_in_order(model: keras.Model) -> list[str]:
  """Block prefixes ('block1a_', ...) in build order."""
  prefixes = []
  for layer in model.layers:
    if layer.name.startswith("block"):
      prefix = layer.name.split("_")[0] + "_"
      if prefix not in prefixes:
        prefixes.append(prefix)
  return prefixes


# Feature extractors (include_top=False): all blocks, no classifier top. The tests below only
# read them, so they come from the session cache that test_contract.py shares.
@pytest.fixture(scope="module")
def v1_b1(built_backbone) -> keras.Model:
  # B1: stage 7 has two blocks, so the last block is residual and carries a drop layer.
  return built_backbone("efficientnet_b1")


@pytest.fixture(scope="module")
def v2_b0(built_backbone) -> keras.Model:
  return built_backbone("efficientnetv2_b0")


def _check_stochastic_depth(model: keras.Model) -> None:
  blocks = _blocks_in_order(model)
  rates = {}
  for i, prefix in enumerate(blocks):
    names = {l.name for l in model.layers}
    if prefix + "drop" in names:
      rates[i] = model.get_layer(prefix + "drop").rate
      assert model.get_layer(prefix + "drop").noise_shape == (None, 1, 1, 1)
  assert len(rates) > len(blocks) // 2
  for i, rate in rates.items():
    assert rate == pytest.approx(0.2 * i / len(blocks), abs=1e-9), blocks[i]
  last = len(blocks) - 1
  assert rates[last] == pytest.approx(0.2 * last / len(blocks)) and rates[last] < 0.2


def test_stochastic_depth_rate_times_index_over_block_count(v1_b1, v2_b0) -> None:
  """keras apps (`drop_connect_rate * b / blocks`) and google/automl's efficientnet_model
  (survival_prob = 1 - drop_rate * idx / len(blocks)): block i of N drops at rate * i / N."""
  _check_stochastic_depth(v1_b1)
  _check_stochastic_depth(v2_b0)
  assert efficientnet_v2.drop_rates(5, 0.2) == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16])


def test_stochastic_depth_rates_equal_keras_apps(v1_b1) -> None:
  """The Dropout rates of tf_keras.applications.EfficientNetB1 (include_top=False), block for
  block, equal detlab's."""
  keras_model = keras.applications.EfficientNetB1(weights=None, include_top=False,
                                                  input_shape=SMALL)
  expected = {l.name: l.rate for l in keras_model.layers if l.name.endswith("_drop")}
  got = {l.name: l.rate for l in v1_b1.layers if l.name.endswith("_drop")}
  assert len(expected) == 16 and got == pytest.approx(expected)


def _check_se(model: keras.Model, expected_blocks_with_se: int) -> None:
  """SE reduces to int(0.25 * the block's input channels); expand back to the block width."""
  seen = 0
  for prefix in _blocks_in_order(model):
    layers = [l for l in model.layers if l.name.startswith(prefix)]
    names = {l.name for l in layers}
    if prefix + "se_reduce" not in names:
      continue
    seen += 1
    block_in = int(layers[0].input.shape[-1])
    width = int(model.get_layer(prefix + "se_excite").input[0].shape[-1])
    assert model.get_layer(prefix + "se_reduce").filters == max(1, int(block_in * 0.25))
    assert model.get_layer(prefix + "se_expand").filters == width
  assert seen == expected_blocks_with_se


def test_se_ratio_quarter_of_block_input(v1_b1, v2_b0) -> None:
  assert v1_b1.get_layer("block2a_se_reduce").filters == 4  # 16 input channels
  assert v1_b1.get_layer("block2a_se_expand").filters == 96  # 16 * 6
  _check_se(v1_b1, expected_blocks_with_se=len(_blocks_in_order(v1_b1)))
  # V2-B0: the three fused stages (1 + 2 + 2 blocks) have no SE, the 3 + 5 + 8 MBConvs do.
  assert v2_b0.get_layer("block4a_se_reduce").filters == 12  # 48 input channels
  _check_se(v2_b0, expected_blocks_with_se=16)


@pytest.mark.parametrize("fixture_name,momentum", [("v1_b1", 0.99), ("v2_b0", 0.9)])
def test_batch_norm_momentum_and_epsilon(request, fixture_name: str, momentum: float) -> None:
  model = request.getfixturevalue(fixture_name)
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert len(bns) > 50
  assert {(l.momentum, l.epsilon) for l in bns} == {(momentum, 1e-3)}


def test_v2_layer_kinds(v2_b0) -> None:
  names = {l.name for l in v2_b0.layers}
  # Fused stages: kxk expand conv, no depthwise; MBConv stages: `dwconv2` (keras V2 name).
  assert v2_b0.get_layer("block2a_expand_conv").kernel_size == (3, 3)
  assert v2_b0.get_layer("block2a_expand_conv").strides == (2, 2)
  assert v2_b0.get_layer("block1a_project_conv").kernel_size == (3, 3)  # expand ratio 1
  assert not any(n.startswith(("block1", "block2", "block3")) and "dwconv" in n for n in names)
  assert v2_b0.get_layer("block4a_dwconv2").kernel_size == (3, 3)
  assert v2_b0.get_layer("stem_conv").filters == 32


def test_feature_channels_follow_the_tables(v1_b1, v2_b0) -> None:
  assert {k: int(v.shape[-1]) for k, v in v1_b1.output.items()} == {
      "2": 24, "3": 40, "4": 112, "5": 320}
  assert {k: int(v.shape[-1]) for k, v in v2_b0.output.items()} == {
      "2": 32, "3": 48, "4": 112, "5": 192}
  assert efficientnet_v2.native_resolution("s") == 384
  assert math.isclose(efficientnet_v2.V2_VARIANTS["b3"].width, 1.2)


def _detector_backbone(gin_file: str) -> keras.Model:
  """The backbone a detector gin file builds (its bindings applied), at 32 px."""
  import gin  # pylint: disable=import-outside-toplevel
  from detlab import config  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    config.parse_gin([gin_file], [])
    return gin.query_parameter("efficientdet.backbone_fn").scoped_configurable_fn(
        input_shape=SMALL)
  finally:
    gin.clear_config()


def test_detector_b0_has_no_stochastic_depth_larger_backbones_keep_it() -> None:
  """google/automl (efficientdet_keras / efficientdet_arch): `if 'b0' in backbone_name:
  override_params['survival_prob'] = 0.0` -- no drop-connect in D0's B0; B1-B7 keep the
  classifier's survival 0.8 (drop rate 0.2)."""
  b0 = _detector_backbone("efficientdet_d0.gin")
  assert b0.name == "efficientnet-b0"
  assert not [l.name for l in b0.layers if isinstance(l, keras.layers.Dropout)]
  b1 = _detector_backbone("efficientdet_d1.gin")
  rates = [l.rate for l in b1.layers if l.name.endswith("_drop")]
  assert b1.name == "efficientnet-b1" and max(rates) == pytest.approx(0.2 * 22 / 23)


# EfficientNet-Lite classifiers (1000 classes): google/automl's backbone/efficientnet_model
# with efficientnet_lite_builder's params, counted under TF 2.20 (the published 4.7M ... 13M).
LITE_COUNTS = {"lite0": 4_694_024, "lite1": 5_470_344, "lite2": 6_150_168,
               "lite3": 8_273_768, "lite4": 13_118_936}


@pytest.mark.parametrize("variant", ["lite0", "lite4"])  # Lite1-3: their detectors' counts
def test_lite_classifier_count_and_what_makes_it_lite(variant: str) -> None:
  model = efficientnet.efficientnet_lite(variant, include_top=True, input_shape=SMALL)
  assert model.count_params() == LITE_COUNTS[variant]
  assert model.get_layer("top_dropout").rate == {"lite0": 0.2, "lite4": 0.3}[variant]
  names = {l.name for l in model.layers}
  assert not any("_se_" in n for n in names)  # no squeeze-excite
  activations = {l.activation.__name__ for l in model.layers
                 if isinstance(l, keras.layers.Activation)}
  assert activations == {"relu6"}
  # Fixed stem and head: 32 and 1280 channels at every width; the first and last stage keep
  # one block at every depth (Lite4: depth 1.8 gives stage 6 ceil(4 * 1.8) = 8 blocks).
  assert model.get_layer("stem_conv").filters == 32
  assert model.get_layer("top_conv").filters == 1280
  blocks = _blocks_in_order(model)
  stages = [sum(b.startswith(f"block{s}") for b in blocks) for s in range(1, 8)]
  assert stages == {"lite0": [1, 2, 2, 3, 3, 4, 1], "lite4": [1, 4, 4, 6, 6, 8, 1]}[variant]
