"""ONNX export: the FP32 file detects as the SavedModel does (soft-NMS inside the file), at a
dynamic batch, through load_runner; the INT8 file is quantised (QDQ) from TFRecords with a
float post-processing and finds the float model's top detections; the graph's NMS selects
what TF's NonMaxSuppressionV5 selects; a missing tf2onnx names the extra; the benchmark
times the files. One export of both precisions of the tiny model_dir (tests' tiny backbone,
64 px) serves the module."""
import importlib.util

import numpy as np
import pytest
import tensorflow as tf

from detlab.benchmark import exported
from detlab.data.tf_example import decode_example
from detlab.detection import postprocess
from detlab.export import exporter, runners
from matching import as_od_api, match_top_detections  # pylint: disable=import-error

onnx_export = pytest.importorskip("detlab.export.onnx")
pytest.importorskip("tf2onnx", reason="ONNX export needs pip install 'detlab[onnx]'")
pytest.importorskip("onnxruntime", reason="ONNX inference needs pip install 'detlab[onnx]'")


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, shapes_dir, tmp_path_factory):
  """python -m detlab.export --formats=onnx_fp32,onnx_int8 of the tiny model (dynamic batch,
  INT8 calibrated on 4 shapes val images)."""
  out = tmp_path_factory.mktemp("onnx_export") / "out"
  exporter.export(str(tiny_model_dir), str(out), ["onnx_fp32", "onnx_int8"],
                  calibration_steps=4,
                  calibration_file_pattern=f"{shapes_dir}/val-*.tfrecord")
  return out




def assert_agree(got: dict, want: dict, box_atol: float, score_atol: float) -> None:
  np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
  np.testing.assert_array_equal(got["classes"], want["classes"])
  np.testing.assert_allclose(got["scores"], want["scores"], atol=score_atol)
  np.testing.assert_allclose(got["boxes"], want["boxes"], atol=box_atol)


def test_fp32_detects_as_the_saved_model(onnx_dir, tiny_model_dir, tiny_export, pictures,
                                         saved_model_detections):
  """Soft-NMS, letterbox windows and the mapping to original pixels, three images in one
  dynamic-batch call, every row. Against LiteRT FP32 (the same uint8 letterboxed input) to
  1e-5 in score; against the SavedModel (which resizes in float, not to uint8) to the
  LiteRT/OpenVINO runner tests' 1e-4 and 0.02 px (measured: 8e-5, 0.01 px)."""
  assert runners.exported_formats(str(onnx_dir)) == {
      "onnx_fp32": str(onnx_dir / "model_fp32.onnx"),
      "onnx_int8": str(onnx_dir / "model_int8.onnx")}
  info = runners.read_export_info(str(onnx_dir))
  assert info["formats"] == {"onnx_fp32": "model_fp32.onnx", "onnx_int8": "model_int8.onnx"}
  assert info["gin_files"] == [str(tiny_model_dir / "config.gin")]  # benchmark's tf model
  runner = runners.load_runner(str(onnx_dir / "model_fp32.onnx"))
  assert isinstance(runner, runners.OnnxRunner)
  assert runner.batch_size is None and runner.image_size == 64
  assert runner.category_names == {1: "circle", 2: "square", 3: "triangle"}
  got = runner(pictures)
  assert saved_model_detections["num_detections"].min() >= 10  # rows to compare
  lite = runners.load_runner(str(tiny_export / "model_fp32.tflite"))(pictures)
  assert_agree(got, lite, box_atol=1e-3, score_atol=1e-5)
  assert_agree(got, saved_model_detections, box_atol=0.02, score_atol=1e-4)


def test_int8_is_quantised_and_finds_the_float_detections(onnx_dir, tiny_export, shapes_dir):
  """QDQ pairs at every conv of the network, none in the post-processing (the NMS loop and
  the top-k read float tensors). On the 4 shapes val images after the 4 it was calibrated on,
  each image's 5 best SavedModel detections are found with their class, IoU >= 0.9 and a
  score within 0.05 (the OpenVINO INT8 test's bound)."""
  import onnx  # pylint: disable=import-outside-toplevel
  graph = onnx.load(str(onnx_dir / "model_int8.onnx")).graph
  ops = [node.op_type for node in graph.node]
  assert ops.count("DequantizeLinear") >= ops.count("Conv") > 0
  made_by = {out: node.op_type for node in graph.node for out in node.output}
  for node in graph.node:
    if node.op_type in ("Loop", "TopK"):
      assert "DequantizeLinear" not in {made_by.get(name) for name in node.input}, node.name
  files = sorted(tf.io.gfile.glob(f"{shapes_dir}/val-*.tfrecord"))
  images = [decode_example(record)["image"].numpy()
            for record in tf.data.TFRecordDataset(files).skip(4).take(4)]
  got = as_od_api(runners.load_runner(str(onnx_dir / "model_int8.onnx"))(images))
  want = as_od_api(runners.load_runner(str(tiny_export / "saved_model"))(images))
  for image in range(len(images)):
    rows = match_top_detections(got, want, image, top=5, min_iou=0.9, score_atol=0.05)
    assert all(matched for _, _, matched in rows), (image, rows)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_graph_nms_selects_as_tf_nms(mode):
  """greedy_nms on a batch against postprocess.nms_one_image (TF's NonMaxSuppressionV5) per
  image: duplicate boxes, a tied score, three classes, and an image with fewer candidates
  above the score threshold than max_detections."""
  rng = np.random.RandomState(4)
  corners = rng.uniform(0, 64, (2, 300, 2, 2))
  boxes = np.concatenate([corners.min(2), corners.max(2)], -1).astype(np.float32)
  scores = rng.uniform(0, 1, (2, 300)).astype(np.float32)
  classes = rng.randint(0, 3, (2, 300)).astype(np.int32)
  for array in (boxes, classes):  # rows 0-5 duplicate rows 6-11
    array[:, :6] = array[:, 6:12]
  scores[:, 9] = scores[:, 3]  # a tie of two duplicates: the lower index wins
  scores[1, :12] = rng.uniform(0.3, 1, 12)  # image 1: 12 candidates above the threshold
  scores[1, 12:] = 0.0
  scores[1, 9] = scores[1, 3]
  config = postprocess.PostprocessConfig(max_detections=40, nms_mode=mode)
  got = [t.numpy() for t in onnx_export.greedy_nms(
      tf.constant(boxes), tf.constant(scores), tf.constant(classes), 64, config)]
  for image in range(2):
    want = [t.numpy() for t in postprocess.nms_one_image(
        tf.constant(boxes[image]), tf.constant(scores[image]), tf.constant(classes[image]),
        64, config)]
    assert got[3][image] == want[3] and 0 < want[3] <= 40
    np.testing.assert_array_equal(got[2][image], want[2])
    np.testing.assert_array_equal(got[0][image], want[0])
    np.testing.assert_allclose(got[1][image], want[1], atol=1e-6)
  # Image 1: soft-NMS decays the duplicates (x exp(-2)) and keeps them; hard NMS drops them.
  assert got[3][1] == {"soft": 12, "hard": 6}[mode]
  # A batch with no candidate above the threshold: no detection, all zero.
  empty = onnx_export.greedy_nms(tf.constant(boxes), tf.zeros([2, 300]),
                                 tf.constant(classes), 64, config)
  assert all(not np.any(t.numpy()) for t in empty)


def test_benchmark_times_the_onnx_files(onnx_dir):
  result = exported.measure_exported(str(onnx_dir), min_seconds=0.01,
                                     formats=["onnx_fp32", "onnx_int8"], batches=(1, 2))
  assert set(result["formats"]) == {"onnx_fp32", "onnx_int8"}
  for values in result["formats"].values():
    assert set(values) == {"e2e_img_s_bs1", "e2e_img_s_bs2"}
    assert all(v > 0 for v in values.values())


def test_missing_onnx_packages_name_the_extra(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tf2onnx" else real(name, *a))
  with pytest.raises(exporter.ExportError, match=r"pip install 'detlab\[onnx\]'"):
    exporter.check_formats(["saved_model", "onnx_int8"])
