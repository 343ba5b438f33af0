"""Quantization-aware training (layers/fake_quant.py) and the INT8 exports that read its ranges.

The grid is TF's FakeQuantWithMinMaxVars: weights symmetric per output channel in 255 levels
(LiteRT's and OpenVINO's INT8 weights), inputs per tensor in 256 levels. Checked here: that
grid against its definition, the folding identity the export relies on (per-channel grid of
s * W = s times the grid of W), the ranges' update rule, training with BN frozen (every
trainable variable gets a gradient, BN statistics stay), the folded fake-quant model equal to
the trained one, and the exported INT8 formats against the TF model without any calibration.
The AP of a QAT fine-tune is in the README (Lite0 demo)."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import api
from detlab.backbones.conventions import IMAGENET_MEAN_STD
from detlab.data.tf_example import decode_example
from detlab.export import exporter, runners
from detlab.export.fold import fold_batch_norms
from detlab.layers import fake_quant
from detlab.training.initialize import initialize_from_checkpoint
from matching import as_od_api, match_top_detections  # pylint: disable=import-error
from random_stats import randomize_batch_norms, randomize_biases  # pylint: disable=import-error
from tiny_export import TINY, openvino_ready  # pylint: disable=import-error

QAT = TINY + ["efficientdet.quantization_aware = True"]


def numpy_weight_grid(kernel: np.ndarray) -> np.ndarray:
  """Symmetric per-output-channel (last axis) int8 grid, levels -127..127 (the definition)."""
  bound = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
  scale = bound / 127.0
  return np.clip(np.round(kernel / scale), -127, 127) * scale


def test_weight_grid_is_symmetric_per_channel():
  rng = np.random.default_rng(0)
  kernel = rng.normal(0, 1, (3, 3, 8, 5)).astype(np.float32) * rng.uniform(0.01, 3, 5)
  got = fake_quant.quantize_kernel(tf.constant(kernel)).numpy()
  np.testing.assert_allclose(got, numpy_weight_grid(kernel), rtol=1e-5, atol=1e-7)
  for channel in range(5):  # at most 255 values, the channel's extreme kept exactly
    assert len(np.unique(got[..., channel])) <= 255
    assert np.abs(got[..., channel]).max() == pytest.approx(np.abs(kernel[..., channel]).max())
  # A depthwise kernel [kh, kw, C, M] has C * M output channels (index c * M + m).
  depthwise = rng.normal(0, 1, (3, 3, 4, 2)).astype(np.float32) * rng.uniform(0.1, 2, (4, 2))
  got = fake_quant.quantize_kernel(tf.constant(depthwise), depthwise=True).numpy()
  want = numpy_weight_grid(depthwise.reshape(3, 3, 1, 8)).reshape(3, 3, 4, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_folding_a_batch_norm_scales_the_weight_grid():
  """The export folds BN (W' = W * s per output channel, s of any sign) after training on
  the grid of W: grid(W * s) must equal grid(W) * s."""
  rng = np.random.default_rng(1)
  kernel = rng.normal(0, 1, (1, 1, 16, 6)).astype(np.float32)
  scale = rng.uniform(0.2, 4, 6).astype(np.float32) * np.array([1, -1, 1, -1, 1, 1], np.float32)
  folded_grid = fake_quant.quantize_kernel(tf.constant(kernel * scale)).numpy()
  grid_folded = fake_quant.quantize_kernel(tf.constant(kernel)).numpy() * scale
  np.testing.assert_allclose(folded_grid, grid_folded, rtol=1e-5, atol=1e-6)


def test_ranges_start_at_the_first_batch_then_follow_its_average():
  ranges = fake_quant.FakeQuantRanges({"conv": False}, decay=0.9)
  low, high = ranges.ranges["conv_input"]
  x = tf.constant([[0.5, 2.0, 1.0]])
  ranges.quantize(x, "conv_input", training=False)
  assert (low.numpy(), high.numpy()) == (0.0, 0.0)  # inference never moves a range
  ranges.quantize(x, "conv_input", training=True)   # first batch; the range holds 0
  assert (low.numpy(), high.numpy()) == (0.0, 2.0)
  ranges.quantize(tf.constant([[-1.0, 4.0]]), "conv_input", training=True)
  assert low.numpy() == pytest.approx(0.9 * 0.0 + 0.1 * -1.0)
  assert high.numpy() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
  out = ranges.quantize(tf.constant([[-5.0, 1.0, 9.0]]), "conv_input", training=False).numpy()
  assert out[0, 0] == pytest.approx(-0.1, abs=0.02) and out[0, 2] == pytest.approx(2.2, abs=0.02)
  assert fake_quant.ranges_seen(ranges)


def shapes_images(shapes_dir: str, count: int) -> list:
  files = sorted(tf.io.gfile.glob(f"{shapes_dir}/val-*.tfrecord"))
  return [decode_example(record)["image"].numpy()
          for record in tf.data.TFRecordDataset(files).take(count)]


@pytest.fixture(scope="module")
def qat_model_dir(tmp_path_factory, shapes_dir):
  """A tiny quantization-aware detector after training-mode batches of shapes images (its
  ranges set, as the first QAT steps set them), with spread BN statistics and biases, saved
  as a model_dir (ckpt-1, config.gin)."""
  directory = tmp_path_factory.mktemp("qat_model_dir")
  keras.utils.set_random_seed(3)
  model = api.load_detector(["efficientdet_d0.gin"], QAT)
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)
  for image in shapes_images(shapes_dir, 8):
    resized = tf.image.resize(tf.cast(image, tf.float32), [64, 64])
    model(IMAGENET_MEAN_STD.normalize(resized)[None], training=True)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory),
                             max_to_keep=1).save(checkpoint_number=1)
  (directory / "config.gin").write_text(api.detector_config(model))
  return directory


def test_training_with_frozen_batch_norms_reaches_every_variable():
  """One traced training step: every trainable variable gets a gradient (the conv biases in
  front of a frozen BN included, which the BN's inference rewrite would cut off), BN is not
  trained and its statistics stay, and each conv input's range is set."""
  keras.utils.set_random_seed(4)
  model = api.load_detector(["efficientdet_d0.gin"], QAT)
  names = {v.name for v in model.trainable_variables}
  assert not any(n.endswith(("gamma:0", "beta:0")) for n in names)
  statistics = [v.numpy() for v in model.non_trainable_variables if "moving_" in v.name]
  images = tf.random.stateless_uniform([2, 64, 64, 3], [0, 1], -1, 1)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      classes, boxes = model(images, training=True)
      loss = tf.add_n([tf.reduce_sum(tf.square(t)) for t in [*classes.values(),
                                                             *boxes.values()]])
    return tape.gradient(loss, model.trainable_variables)

  grads = step()
  assert [v.name for v, g in zip(model.trainable_variables, grads) if g is None] == []
  after = [v.numpy() for v in model.non_trainable_variables if "moving_" in v.name]
  assert all(np.array_equal(a, b) for a, b in zip(statistics, after))
  assert fake_quant.ranges_seen(model.fake_quant)
  convs = fake_quant.named_convs(model)
  assert len(convs) == len({key for key, _ in convs})  # one range per conv, keyed uniquely


def test_folded_fake_quant_model_equals_the_trained_one(qat_model_dir):
  model = api.load_detector([str(qat_model_dir / "config.gin")], checkpoint=str(qat_model_dir))
  folded = fold_batch_norms(model)
  fake_quant.quantize_model(folded, model.fake_quant, freeze_batch_norms=False)
  images = tf.random.stateless_uniform([2, 64, 64, 3], [5, 6], -1, 1)
  want, got = model(images, training=False), folded(images, training=False)
  for level in want[0]:
    # Folding changes conv outputs by float rounding, so now and then an activation lands on
    # the other side of a rounding boundary: a handful of elements move by one step.
    diff = np.abs(got[0][level].numpy() - want[0][level].numpy())
    assert np.median(diff) < 1e-4 and np.mean(diff > 1e-3) < 0.02, level


def test_exports_int8_from_the_trained_ranges(qat_model_dir, tmp_path, shapes_dir):
  """No calibration records exist for TINY (its eval pattern is the recipe's COCO path): the
  INT8 formats come from the ranges alone, the IR holds FakeQuantize ops, and the INT8
  detections match the TF model's (which runs the same fake quantisation) on shapes images."""
  formats = ["onnx_int8"] + (["openvino_int8"] if openvino_ready() else [])
  written = exporter.export(str(qat_model_dir), str(tmp_path), formats=formats)
  info = json.loads((tmp_path / "export.json").read_text())
  assert info["int8_ranges"] == "quantization-aware training"
  images = shapes_images(shapes_dir, 4)
  want = as_od_api(runners.load_runner(str(qat_model_dir))(images))
  for name, path in written.items():
    if name == "openvino_int8":
      assert "FakeQuantize" in (tmp_path / "openvino_int8" / "model.xml").read_text()
    got = as_od_api(runners.load_runner(path)(images))
    for image in range(len(images)):
      rows = match_top_detections(got, want, image, top=5, min_iou=0.95, score_atol=0.01)
      assert all(matched for _, _, matched in rows), (name, image, rows)


def test_a_qat_model_without_trained_ranges_is_refused(tmp_path):
  keras.utils.set_random_seed(5)
  model = api.load_detector(["efficientdet_d0.gin"], QAT)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path / "run"),
                             max_to_keep=1).save(checkpoint_number=1)
  (tmp_path / "run" / "config.gin").write_text(api.detector_config(model))
  with pytest.raises(exporter.ExportError, match="quantization_aware_training.gin"):
    exporter.export(str(tmp_path / "run"), str(tmp_path / "out"), formats=["onnx_int8"])


def test_tflite_int8_of_a_qat_model_is_refused(qat_model_dir, tmp_path):
  with pytest.raises(exporter.ExportError, match="sigmoid scores"):
    exporter.export(str(qat_model_dir), str(tmp_path), formats=["saved_model", "tflite_int8"])


def test_fine_tuning_starts_from_a_float_checkpoint(tiny_model_dir):
  """A float detector's checkpoint has no ranges: init_mode='detector' loads everything
  else and leaves the ranges to the first training batch."""
  keras.utils.set_random_seed(6)
  model = api.load_detector(["efficientdet_d0.gin"], QAT)
  table = initialize_from_checkpoint(model, str(tiny_model_dir), "detector")
  assert table["fake_quant"] == {"loaded": 0, "skipped": 0,
                                 "new": len(model.fake_quant.weights)}
  assert table["backbone"]["new"] == table["fpn"]["new"] == 0
