"""LiteRT export: the FP32/FP16 flatbuffers run with ai_edge_litert and detect as TF does.

A tiny detector (tests' tiny backbone, width 16, one BiFPN cell) keeps conversion short; the
folding of D0 itself is tested in test_fold.py."""
import numpy as np
import pytest
import tensorflow as tf

from detlab.data.tf_example import build_example
from detlab.detection.postprocess import PostprocessConfig
from detlab.export import tflite
from detlab.export.fold import fold_batch_norms
from detlab.export.saved_model import DetectionServing
from detlab.models.efficientdet import efficientdet
from random_stats import randomize_batch_norms  # pylint: disable=import-error
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=import-error

pytest.importorskip("ai_edge_litert", reason="LiteRT export needs pip install ai-edge-litert "
                    "(the 'export' extra)")


@pytest.fixture(scope="module")
def serving():
  model = efficientdet(tiny_test_backbone, num_classes=3, image_size=128, fpn_width=16,
                       fpn_cells=1, head_repeats=1)
  randomize_batch_norms(model)
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
  normalised = (pixels[0].astype(np.float32) - tflite.MEAN_RGB_PIXELS) / [58.395, 57.12, 57.375]
  np.testing.assert_allclose(normalised, expected.numpy(), atol=0.5 / 57.12 + 1e-5)
  assert (pixels[0, 102:] == np.round(tflite.MEAN_RGB_PIXELS).astype(np.uint8)).all()


@pytest.mark.parametrize("precision,score_atol", [("fp32", 1e-5), ("fp16", 3e-3)])
def test_litert_detections_equal_tf_ones(serving, letterboxed, tmp_path, precision, score_atol):
  _, pixels, _ = letterboxed
  path = tflite.export_tflite(serving, str(tmp_path / f"model_{precision}.tflite"), precision)
  got = tflite.run_tflite(path, pixels)
  want = {k: v.numpy() for k, v in tflite.lite_function(serving, 1)(tf.constant(pixels)).items()}
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
  conv weights and activations are int8; post-processing (NMS) stays float by design."""
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
  _, pixels, _ = letterboxed
  got = tflite.run_tflite(path, pixels)
  want = tflite.lite_function(serving, 1)(tf.constant(pixels))
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"].numpy())
  np.testing.assert_allclose(got["detection_scores"][0, :5],
                             want["detection_scores"].numpy()[0, :5], atol=2e-3)
