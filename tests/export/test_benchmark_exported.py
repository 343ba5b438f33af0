"""`python -m detlab.benchmark --exported=OUT --json`: one object with end-to-end img/s at
batch 1 and 8 for the in-process TF model and every format found in OUT (tiny_export:
saved_model, tflite_fp32 and openvino_fp32 where installed), and the machine line. Timings
are not asserted (they depend on the machine); their presence, sign, which format is best
and its ratio to tf are."""
import json
import os
import subprocess
import sys

import pytest

from tiny_export import openvino_ready  # pylint: disable=import-error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# python -m detlab.benchmark, with the tests' tiny backbone registered for the model's gin.
CLI = ("import runpy, sys; sys.path.insert(0, 'tests/training'); import tiny_backbone; "
       "sys.argv[0] = 'detlab.benchmark'; runpy.run_module('detlab.benchmark', "
       "run_name='__main__')")


def test_benchmark_exported_reports_every_format_beside_tf(tiny_export):
  result = subprocess.run([sys.executable, "-c", CLI, f"--exported={tiny_export}", "--json",
                           "--seconds=0.01", "--input_hw=48,80"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  expected = {"tf", "saved_model", "tflite_fp32"} | ({"openvino_fp32"} if openvino_ready()
                                                     else set())
  assert set(report["formats"]) == expected
  for name, values in report["formats"].items():
    assert set(values) == {"e2e_img_s_bs1", "e2e_img_s_bs8"}, name
    assert all(v > 0 for v in values.values()), name
  assert "cores" in report["machine"] and report["image_size"] == 64
  assert report["input_hw"] == [48, 80]  # frames of another size: letterboxed by each runner
  # The best format is the exported one whose slower batch size runs fastest.
  exported = {k: v for k, v in report["formats"].items() if k != "tf"}
  best = report["best_format"]
  assert best == max(exported, key=lambda k: min(exported[k].values()))
  for key, ratio in report["best_over_tf"].items():
    assert ratio == pytest.approx(report["formats"][best][key] / report["formats"]["tf"][key])


def test_missing_export_json_names_the_fix(tmp_path):
  from detlab.benchmark import exported  # pylint: disable=import-outside-toplevel
  with pytest.raises(FileNotFoundError, match="python -m detlab.export"):
    exported.measure_exported(str(tmp_path))


@pytest.mark.parametrize("values", [["480"], ["480", "x"], ["0", "640"]])
def test_input_hw_takes_height_and_width(values):
  from detlab.benchmark import exported  # pylint: disable=import-outside-toplevel
  assert exported.parse_input_hw(["480", "640"]) == (480, 640)
  assert exported.parse_input_hw([]) is None
  with pytest.raises(ValueError, match="height,width"):
    exported.parse_input_hw(values)
