"""OpenVINO export: the FP32 IR (+ detlab's NMS) detects as the TF model does at any batch,
keeps float32 weights; the INT8 IR is quantised by NNCF from TFRecords; a missing openvino
names the extra to install. A tiny detector (tests' tiny backbone, 64 px) keeps conversion
to seconds; the LiteRT graph (tflite.lite_function) is the independent TF implementation of
the same input contract and protocol it is compared with."""
import importlib.util
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.data.tf_example import build_example
from detlab.detection.postprocess import PostprocessConfig
from detlab.export import exporter, tflite
from detlab.export.fold import fold_batch_norms
from detlab.export.saved_model import DetectionServing
from detlab.models.efficientdet import efficientdet
from matching import match_top_detections  # pylint: disable=import-error
from random_stats import randomize_batch_norms, randomize_biases  # pylint: disable=import-error
from tiny_backbone import tiny_test_backbone  # pylint: disable=import-error

openvino = pytest.importorskip("detlab.export.openvino")
pytest.importorskip("openvino", reason="OpenVINO export needs pip install 'detlab[openvino]'")


@pytest.fixture(scope="module")
def serving():
  keras.utils.set_random_seed(0)
  model = efficientdet(tiny_test_backbone, num_classes=3, image_size=64, fpn_width=16,
                       fpn_cells=1, head_repeats=1, max_level=5)
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)  # scores spread around 0.5: detections to compare
  return DetectionServing(fold_batch_norms(model), PostprocessConfig(max_detections=20))


@pytest.fixture(scope="module")
def fp32_ir(serving, tmp_path_factory):
  return openvino.export_openvino(serving, str(tmp_path_factory.mktemp("ov") / "fp32"))


def letterboxed_batch(count: int) -> np.ndarray:
  rng = np.random.RandomState(count)
  return np.stack([tflite.letterbox_uint8(tf.constant(rng.randint(0, 256, (48, 80, 3),
                                                                  np.uint8)), 64)[0].numpy()
                   for _ in range(count)])


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_ir_detects_as_tf_at_any_batch(serving, fp32_ir, batch):
  detector = openvino.OpenVinoDetector(fp32_ir)
  assert detector.batch_size is None and detector.image_size == 64  # dynamic batch
  images = letterboxed_batch(batch)
  got = detector(images)
  lite = tflite.lite_function(serving, batch)
  want = {k: v.numpy() for k, v in lite(images, tflite.full_windows(images)).items()}
  assert got["detection_boxes"].shape == (batch, 20, 4)
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  np.testing.assert_array_equal(got["detection_classes"], want["detection_classes"])
  np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=1e-5)
  np.testing.assert_allclose(got["detection_boxes"], want["detection_boxes"], atol=1e-3)


def test_fp32_ir_stores_float32_weights(fp32_ir):
  """save_model's default would halve the weights to FP16 (compress_to_fp16)."""
  import openvino as ov  # pylint: disable=import-outside-toplevel
  types = {op.get_output_element_type(0).get_type_name() for op in
           ov.Core().read_model(fp32_ir).get_ops() if op.get_type_name() == "Constant"}
  assert "f32" in types and "f16" not in types


def test_fp32_ir_top_k_is_unstable(fp32_ir):
  """The pre-NMS TopK is not `stable`: on a ReLU6 Lite0 with tied scores OpenVINO's stable
  TopK was 10x the whole network's time (see openvino.unstable_top_k)."""
  import openvino as ov  # pylint: disable=import-outside-toplevel
  top_k = [op for op in ov.Core().read_model(fp32_ir).get_ops() if op.get_type_name() == "TopK"]
  assert top_k and not any(op.get_attributes()["stable"] for op in top_k)


def activation_ranges(model) -> list[tuple[float, float]]:
  """(input_low, input_high) of each per-tensor FakeQuantize on an activation (not a weight)."""
  ranges = []
  for op in model.get_ops():
    if op.get_type_name() != "FakeQuantize":
      continue
    source, low, high = (op.input_value(i).get_node() for i in range(3))
    if (source.get_type_name() != "Constant" and low.get_type_name() == "Constant"
        and low.get_data().size == 1):
      ranges.append((float(low.get_data().ravel()[0]), float(high.get_data().ravel()[0])))
  return ranges


def test_int8_ir_is_quantised_from_tfrecords_and_close(serving, tmp_path):
  """NNCF inserts FakeQuantize before every conv (a silently float export has none), with
  asymmetric activation ranges (MIXED preset)."""
  rng = np.random.RandomState(1)
  with tf.io.TFRecordWriter(str(tmp_path / "val.tfrecord")) as writer:
    for i in range(4):
      image = rng.randint(0, 256, (50, 75, 3), dtype=np.uint8)
      writer.write(build_example(
          encoded_image=tf.io.encode_png(image).numpy(), image_format="png", source_id=str(i),
          height=50, width=75, boxes_yxyx=np.zeros([0, 4]), category_ids=[],
          category_names=[]).SerializeToString())
  path = openvino.export_openvino(serving, str(tmp_path / "int8"), "int8",
                                  calibration_files=[str(tmp_path / "val.tfrecord")],
                                  calibration_steps=4)
  import openvino as ov  # pylint: disable=import-outside-toplevel
  ops = [op.get_type_name() for op in ov.Core().read_model(path).get_ops()]
  convs = ops.count("Convolution") + ops.count("GroupConvolution")
  assert ops.count("FakeQuantize") >= convs > 0
  # NNCF's MIXED preset: activations get their own (asymmetric) ranges; PERFORMANCE's
  # symmetric ones (none asymmetric) cost the shapes demos 0.03-0.04 AP (openvino.quantize).
  ranges = activation_ranges(ov.Core().read_model(path))
  assert any(low < 0 and not np.isclose(-low, high, rtol=0.02) for low, high in ranges), ranges
  images = letterboxed_batch(2)
  got = openvino.OpenVinoDetector(path)(images)
  lite = tflite.lite_function(serving, 2)
  want = {k: v.numpy() for k, v in lite(images, tflite.full_windows(images)).items()}
  # Each image's 5 best float detections: found by INT8 with their class, IoU >= 0.9 and a
  # close score (int8 moves the logits, not the top of the ranking wholesale; measured: IoU
  # >= 0.92, scores within 0.003).
  for image in range(2):
    rows = match_top_detections(got, want, image, top=5, min_iou=0.9, score_atol=0.05)
    assert all(matched for _, _, matched in rows), (image, rows)


def test_missing_openvino_names_the_extra(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "openvino" else real(name, *a))
  with pytest.raises(exporter.ExportError, match=r"pip install 'detlab\[openvino\]'"):
    exporter.check_formats(["saved_model", "openvino_fp32"])
  monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
  with pytest.raises(ImportError, match=r"detlab\[openvino\]"):
    openvino.import_openvino()
