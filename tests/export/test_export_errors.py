"""Bad export requests fail before any model is built, with a message naming the fix."""
import os
import subprocess
import sys

import pytest

from detlab.export import exporter


def test_unknown_format_is_a_plain_cli_error(model_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "detlab.export", f"--model_dir={model_dir}",
       f"--output_dir={tmp_path / 'out'}", "--formats=saved_model,onnx"],
      capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
      timeout=300)
  assert result.returncode == 1
  assert "detlab.export: error: Unknown format 'onnx'" in result.stderr
  assert "tflite_int8" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_int8_without_calibration_records_names_the_flag(model_dir, tmp_path):
  with pytest.raises(exporter.ExportError, match="--calibration_file_pattern"):
    exporter.export(str(model_dir), str(tmp_path / "out"), ["tflite_int8"],
                    calibration_file_pattern=str(tmp_path / "missing-*.tfrecord"))
  assert not (tmp_path / "out").exists()


def test_model_dir_without_checkpoint_says_how_to_get_one(tmp_path):
  (tmp_path / "config.gin").write_text("")
  with pytest.raises(exporter.ExportError, match="No checkpoint in --model_dir.*detlab.train"):
    exporter.export(str(tmp_path), str(tmp_path / "out"))
  with pytest.raises(exporter.ExportError, match="does not exist"):
    exporter.export(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_model_dir_without_gin_config_asks_for_gin_file(model_dir, tmp_path):
  for name in os.listdir(model_dir):
    if name.startswith(("ckpt-", "checkpoint")):
      (tmp_path / name).write_bytes((model_dir / name).read_bytes())
  with pytest.raises(exporter.ExportError, match="--gin_file"):
    exporter.export(str(tmp_path), str(tmp_path / "out"))


def test_non_empty_output_dir_asks_for_overwrite(model_dir, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(exporter.ExportError, match="not empty; pass --overwrite"):
    exporter.export(str(model_dir), str(tmp_path))


def test_overwrite_replaces_only_the_exported_files(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / "saved_model").mkdir()
  (tmp_path / "saved_model" / "saved_model.pb").write_text("old")
  (tmp_path / "export.json").write_text("{}")
  exporter.clear_outputs(str(tmp_path), exporter.output_paths(str(tmp_path), ["saved_model"]))
  assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_bad_batch_size_and_input_type(model_dir, tmp_path):
  with pytest.raises(exporter.ExportError, match="--batch_size must be >= 1"):
    exporter.export(str(model_dir), str(tmp_path), batch_size=0)
  with pytest.raises(exporter.ExportError, match="--input_type must be one of"):
    exporter.export(str(model_dir), str(tmp_path), input_type="jpeg")
