"""Export and load_runner on a remote file system: ram:// (TF's in-memory file system) stands in
for gs://. Every format is written there and each runner loads it back from there; what
OpenVINO can only read or write locally goes through a temporary directory that is removed.

One export of the tiny model_dir (tiny_export.py) in every format with its own writer."""
import tempfile
import uuid

import numpy as np
import pytest
import tensorflow as tf

from detlab.data.tf_example import build_example
from detlab.export import exporter, runners
from tiny_export import openvino_ready  # pylint: disable=import-error

pytest.importorskip("ai_edge_litert", reason="the LiteRT formats need ai-edge-litert")


def _write_calibration_records(path: str) -> None:
  rng = np.random.RandomState(3)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(2):
      image = rng.randint(0, 256, (48, 64, 3), dtype=np.uint8)
      writer.write(build_example(
          encoded_image=tf.io.encode_png(image).numpy(), image_format="png", source_id=str(i),
          height=48, width=64, boxes_yxyx=np.zeros([0, 4]), category_ids=[],
          category_names=[]).SerializeToString())


def test_every_format_exports_to_ram_and_loads_back_without_leaving_temp_files(
    tiny_model_dir, tmp_path, monkeypatch):
  # Same writer and reader as a format kept here, so left out (suite time): onnx_int8 is
  # onnx_fp32's file quantised (tests/export/test_onnx.py), openvino_int8 goes through
  # openvino_fp32's local-directory copy and tflite_int8's calibration reader, tflite_fp16
  # through tflite_fp32's write_bytes.
  formats = [f for f in exporter.FORMATS if (openvino_ready() or not f.startswith("openvino"))
             and f not in ("onnx_int8", "openvino_int8", "tflite_fp16")]
  root = f"ram://detlab_remote_{uuid.uuid4().hex[:8]}"
  calibration = f"{root}/val.tfrecord"
  _write_calibration_records(calibration)
  # Everything this process puts in the temporary directory lands in one of its own.
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  image = np.random.RandomState(0).randint(0, 256, (40, 64, 3), dtype=np.uint8)
  try:
    written = exporter.export(str(tiny_model_dir), f"{root}/out", formats,
                              calibration_steps=2, calibration_file_pattern=calibration)
    assert sorted(written) == sorted(formats)
    assert all(path.startswith(f"{root}/out/") for path in written.values())
    found = runners.exported_formats(f"{root}/out")
    assert sorted(found) == sorted(formats)
    results = {}
    for name, path in found.items():
      runner = runners.load_runner(path)
      results[name] = runner(image)
      assert runner.category_names == {1: "circle", 2: "square", 3: "triangle"}, name
    # Nothing left behind but autograph's generated modules (TF keeps them while it runs).
    left = [p.name for p in temp.iterdir()
            if not p.name.startswith("__autograph_generated_file")]
    assert left == []
  finally:
    tf.io.gfile.rmtree(root)
  # Each loaded model detects (the float formats as the SavedModel does; their agreement is
  # tested in test_runners.py and test_parity.py, here only that the right files came back).
  want = results["saved_model"]
  assert want["num_detections"][0] > 0
  for name, got in results.items():
    assert got["num_detections"][0] > 0, name
    if name in ("tflite_fp32", "openvino_fp32"):  # LiteRT: the SavedModel's first rows
      top = min(3, got["num_detections"][0])
      np.testing.assert_array_equal(got["classes"][0, :top], want["classes"][0, :top], name)
      np.testing.assert_allclose(got["scores"][0, :top], want["scores"][0, :top], atol=1e-4,
                                 err_msg=name)
