"""LiteRT export: the FP32/FP16 flatbuffers run with ai_edge_litert and detect as TF does.

A tiny detector (tests' tiny backbone, width 16, one BiFPN cell) keeps conversion short; the
folding of D0 itself is tested in test_fold.py."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.backbones.conventions import IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE
from detlab.data.tf_example import build_example
from detlab.detection.postprocess import PostprocessConfig
from detlab.export import tflite
from detlab.export.fold import fold_batch_norms
from detlab.export.saved_model import DetectionServing
from detlab.models.efficientdet import efficientdet
from matching import match_top_detections  # pylint: disable=import-error
from random_stats import randomize_batch_norms, randomize_biases  # pylint: disable=import-error
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=import-error

pytest.importorskip("ai_edge_litert", reason="LiteRT export needs pip install ai-edge-litert "
                    "(the 'export' extra)")


@pytest.fixture(scope="module")
def serving():
  keras.utils.set_random_seed(0)
  model = efficientdet(tiny_test_backbone, num_classes=3, image_size=128, fpn_width=16,
                       fpn_cells=1, head_repeats=1)
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)  # scores spread around 0.5 instead of ties at the 0.01 prior
  return DetectionServing(fold_batch_norms(model), PostprocessConfig(max_detections=20))


@pytest.fixture(scope="module")
def letterboxed():
  image = np.random.RandomState(0).randint(0, 256, (96, 160, 3), dtype=np.uint8)
  pixels, scale = tflite.letterbox_uint8(tf.constant(image), 128)
  return image, pixels.numpy()[None], float(scale)


def test_letterbox_pads_with_the_mean_colour_like_the_eval_pipeline(serving, letterboxed):
  """Normalising the letterboxed uint8 input gives the eval parser's model input (up to the
  uint8 rounding of resized pixels, <= 0.5 / 57 after normalisation)."""
  image, pixels, scale = letterboxed
  assert scale == pytest.approx(128 / 160)
  expected, _ = serving.preprocess_one(tf.constant(image))
  normalised = ((pixels[0].astype(np.float32) - IMAGENET_MEAN_STD.mean) /
                IMAGENET_MEAN_STD.std)
  np.testing.assert_allclose(normalised, expected.numpy(), atol=0.5 / 57.12 + 1e-5)
  assert (pixels[0, 102:] == np.round(IMAGENET_MEAN_STD.mean).astype(np.uint8)).all()


def test_litert_follows_the_backbones_input_convention(tmp_path):
  """A backbone of the [-1, 1] convention (keras Inception v3 / Xception's): the LiteRT model
  normalises by it and the letterbox pads with its mean, so LiteRT detects as the serving TF
  model, whose parser normalises as evaluation does. With ImageNet mean/std hard-coded the
  inputs would differ by up to ~1.1 after normalisation."""
  keras.utils.set_random_seed(0)
  model = efficientdet(tiny_test_backbone, num_classes=3, image_size=64, fpn_width=16,
                       fpn_cells=1, head_repeats=1, max_level=5)
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)  # scores spread around 0.5: detections to compare
  model.backbone.input_convention = MINUS_ONE_TO_ONE
  serving = DetectionServing(fold_batch_norms(model), PostprocessConfig(max_detections=20))
  assert serving.convention == MINUS_ONE_TO_ONE  # folding keeps the backbone's own
  # A 64 x 64 image at S = 64: no resize and no pad, both formats see the same pixels.
  image = np.random.RandomState(2).randint(0, 256, (64, 64, 3), dtype=np.uint8)
  want = {k: v.numpy() for k, v in serving.serve("image_tensor")(tf.constant(image[None])).items()}
  pixels, scale = tflite.letterbox_uint8(tf.constant(image), 64, serving.convention)
  assert float(scale) == 1.0
  got = tflite.run_tflite(tflite.export_tflite(serving, str(tmp_path / "m.tflite"), "fp32"),
                          pixels.numpy()[None])
  assert want["num_detections"][0] > 0
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  np.testing.assert_array_equal(got["detection_classes"], want["detection_classes"])
  np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=1e-5)
  np.testing.assert_allclose(got["detection_boxes"], want["detection_boxes"], atol=1e-2)
  padded, _ = tflite.letterbox_uint8(tf.constant(image[:40]), 64, MINUS_ONE_TO_ONE)
  assert (padded.numpy()[40:] == 128).all()  # round(127.5): normalises to 1/255, not 0.0


@pytest.mark.parametrize("precision,score_atol", [("fp32", 1e-5), ("fp16", 3e-3)])
def test_litert_detections_equal_tf_ones(serving, letterboxed, tmp_path, precision, score_atol):
  _, pixels, _ = letterboxed
  path = tflite.export_tflite(serving, str(tmp_path / f"model_{precision}.tflite"), precision)
  got = tflite.run_tflite(path, pixels)
  lite = tflite.lite_function(serving, 1)
  want = {k: v.numpy() for k, v in lite(tf.constant(pixels), tflite.full_windows(pixels)).items()}
  assert got["detection_boxes"].shape == (1, 20, 4)
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  np.testing.assert_allclose(got["detection_scores"][0, :5], want["detection_scores"][0, :5],
                             atol=score_atol)
  np.testing.assert_array_equal(got["detection_classes"][0, :5],
                                want["detection_classes"][0, :5])
  np.testing.assert_allclose(got["detection_boxes"][0, :5], want["detection_boxes"][0, :5],
                             atol=0.5 if precision == "fp16" else 1e-2)
  dtypes = tensor_dtypes(path)
  assert ("float16" in dtypes) == (precision == "fp16")  # fp16 stores float16 weights


def tensor_dtypes(path: str) -> set:
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  return {d["dtype"].__name__ for d in Interpreter(model_path=path).get_tensor_details()}


def test_int8_is_calibrated_from_tfrecords_and_really_integer(serving, letterboxed, tmp_path):
  """The known INT8 pain is a file that silently stays float (google/automl#821): here the
  conv weights and activations are int8; post-processing (top-k, decoding, NMS) stays float."""
  rng = np.random.RandomState(1)
  with tf.io.TFRecordWriter(str(tmp_path / "val.tfrecord")) as writer:
    for i in range(3):
      image = rng.randint(0, 256, (100, 150, 3), dtype=np.uint8)
      writer.write(build_example(
          encoded_image=tf.io.encode_png(image).numpy(), image_format="png", source_id=str(i),
          height=100, width=150, boxes_yxyx=np.zeros([0, 4]), category_ids=[],
          category_names=[]).SerializeToString())
  path = tflite.export_tflite(serving, str(tmp_path / "model_int8.tflite"), "int8",
                              calibration_files=[str(tmp_path / "val.tfrecord")],
                              calibration_steps=3)
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  details = Interpreter(model_path=path).get_tensor_details()
  assert sum(d["dtype"] == np.int8 for d in details) > sum(d["dtype"] == np.float32
                                                            for d in details)
  # Only the network: top-k, sigmoid scores, box decoding and NMS stay float (int8 there cost
  # dAP -0.82 on the random parity model, against -0.20 network-only).
  # (The converter still round-trips one column of the network's int8 box regression through
  # int8 at a split; its values were int8 already.)
  int8_post = [d["name"] for d in details
               if f"{tflite.POSTPROCESS_SCOPE}/" in d["name"] and d["dtype"] == np.int8]
  assert all("decode_boxes/split" in name for name in int8_post), int8_post
  assert any(f"{tflite.POSTPROCESS_SCOPE}/" in d["name"] for d in details)
  outputs = Interpreter(model_path=path).get_signature_runner().get_output_details()
  assert {v["dtype"] for v in outputs.values()} == {np.float32}
  # The network is int8 from its input QUANTIZE to the heads' outputs, in ops LiteRT's XNNPACK
  # delegate runs: no float island (the BiFPN's AddN had stayed float, DEQUANTIZE -> ADD_N ->
  # QUANTIZE at every fusion) and no TILE (its repeat upsampling); either cut D0's INT8
  # graph into 52 separately delegated pieces.
  interpreter = Interpreter(model_path=path)
  names = {d["index"]: d["name"] for d in details}
  network_ops = [op for op in interpreter._get_ops_details()  # pylint: disable=protected-access
                 if not any(f"{tflite.POSTPROCESS_SCOPE}/" in names[t] for t in op["outputs"])]
  kinds = [op["op_name"] for op in network_ops]
  assert "DEPTH_TO_SPACE" in kinds and not {"ADD_N", "TILE"} & set(kinds), sorted(set(kinds))
  dequantized = [names[op["inputs"][0]] for op in network_ops if op["op_name"] == "DEQUANTIZE"]
  assert dequantized and all("_net/predict" in name for name in dequantized), dequantized
  _, pixels, _ = letterboxed
  got = tflite.run_tflite(path, pixels)
  lite = tflite.lite_function(serving, 1, drop_empty=False)  # as INT8 converts it
  want = {k: v.numpy() for k, v in lite(tf.constant(pixels), tflite.full_windows(pixels)).items()}
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  # The float model's 2 best detections: each found by INT8 with its class, IoU >= 0.9 and a
  # close score (measured: IoU >= 0.999, scores within 7e-4). Lower down, this random
  # network's near-tied scores (0.5-0.6) reorder under int8 (see test_parity's doc).
  rows = match_top_detections(got, want, 0, top=2, min_iou=0.9, score_atol=0.01)
  assert all(matched for _, _, matched in rows), rows
