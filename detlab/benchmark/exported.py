"""End-to-end speed of every format in an export directory, beside detlab's own TF model.

`python -m detlab.benchmark --exported=OUT [--json] [--seconds=S]` times, for each format
found in OUT and for the in-process TF model of the export's model_dir, images/s from uint8
images to detections in original pixels (decoding excluded) at batch 1 and 8:
  tf            detlab.api.detect on the unfolded model (the model_dir's gin config and
                checkpoint, as export.json records them): what detlab does without export
  saved_model   OUT/saved_model's serving_default (pre/post-processing inside, any batch)
  tflite_*      the LiteRT file through runners.TfliteRunner: letterbox, the file, boxes
                mapped back. A file exported with batch 1 runs a batch of 8 as 8 calls.
  openvino_*    the IR through runners.OpenVinoRunner: letterbox, the IR (dynamic batch:
                one call of 8), detlab's NMS in TF, boxes mapped back
  onnx_*        the ONNX file through runners.OnnxRunner on onnxruntime: letterbox, the file
                (NMS inside; dynamic batch: one call of 8), boxes mapped back
The images are random uint8 at the model's input size (S x S) unless --input_hw gives
another (e.g. 480,640: each format then also resizes, letterboxes and maps boxes back, as it
would for camera frames); every format does the same work per image. Each figure is images /
the median seconds of repeated calls.
"""
import os

from absl import logging
import numpy as np

from detlab.benchmark.report import machine_description
from detlab.benchmark.timing import time_call
from detlab.export import runners

BATCHES = (1, 8)


def export_info(output_dir: str) -> dict:
  info = runners.read_export_info(output_dir)
  if not info:
    raise FileNotFoundError(f"--exported={output_dir} holds no export.json; point it at the "
                            "--output_dir of python -m detlab.export.")
  return info


def tf_runner(info: dict):
  """detlab.api.detect on the export's model (unfolded, same weights as the export)."""
  from detlab import api  # pylint: disable=import-outside-toplevel
  model = api.load_detector(info["gin_files"], info.get("gin_bindings", ()),
                            checkpoint=info["checkpoint"], use_ema=info.get("weights") == "EMA")
  return lambda images: api.detect(model, images)


def parse_input_hw(values) -> tuple[int, int] | None:
  """--input_hw's ["480", "640"] -> (480, 640); [] -> None; anything else an error naming it."""
  if not values:
    return None
  try:
    height, width = (int(v) for v in values)
  except ValueError:
    height = width = 0
  if height < 1 or width < 1:
    raise ValueError(f"--input_hw takes height,width in pixels (e.g. 480,640), got "
                     f"{','.join(values)!r}.")
  return height, width


def e2e_images_per_second(runner, input_hw: tuple[int, int], batch: int, min_seconds: float,
                          seed: int = 0) -> float:
  images = np.random.RandomState(seed).randint(0, 256, (batch, *input_hw, 3), np.uint8)
  return batch / time_call(lambda: runner(images)["num_detections"], min_seconds)


def measure_exported(output_dir: str, min_seconds: float = 5.0, formats=None,
                     batches=BATCHES, input_hw: tuple[int, int] | None = None) -> dict:
  """{"formats": {name: {"e2e_img_s_bs1": ..., "e2e_img_s_bs8": ...}}, "image_size",
  "input_hw", "machine", "load_average"}; `formats` limits the measured names (default: tf +
  all found); input_hw: the fed images' size (default the model's S x S)."""
  info = export_info(output_dir)
  size = int(info["image_size"])
  input_hw = tuple(input_hw or (size, size))
  candidates = {"tf": None, **runners.exported_formats(output_dir)}
  if formats:
    unknown = set(formats) - set(candidates)
    if unknown:
      raise ValueError(f"{sorted(unknown)} not in {output_dir}; it holds "
                       f"{sorted(candidates)}.")
    candidates = {k: v for k, v in candidates.items() if k in formats}
  results = {}
  for name, path in candidates.items():
    runner = tf_runner(info) if name == "tf" else runners.load_runner(path)
    results[name] = {}
    for batch in batches:
      results[name][f"e2e_img_s_bs{batch}"] = e2e_images_per_second(runner, input_hw, batch,
                                                                    min_seconds)
    logging.info("%s: %s", name, results[name])
    del runner
  best = max((k for k in results if k != "tf"), default=None,
             key=lambda k: min(results[k].values()))
  out = {"formats": results, "image_size": size, "input_hw": list(input_hw),
         "model_dir": info.get("model_dir"),
         "batch_norms_folded": info.get("batch_norms_folded"),
         "machine": machine_description(), "load_average": list(os.getloadavg())}
  if best and "tf" in results:  # the goal: the best format >= 2x the TF model at bs1 and bs8
    out["best_format"] = best
    out["best_over_tf"] = {key: results[best][key] / results["tf"][key]
                           for key in results["tf"]}
  return out


def format_speed_table(result: dict) -> str:
  keys = [f"e2e_img_s_bs{b}" for b in BATCHES]
  lines = [f"{'format':16s}" + "".join(f"{k:>16s}" for k in keys)]
  for name, values in result["formats"].items():
    lines.append(f"{name:16s}" + "".join(f"{values.get(k, float('nan')):16.2f}" for k in keys))
  if "best_over_tf" in result:
    ratios = ", ".join(f"{k}: {v:.2f}x" for k, v in result["best_over_tf"].items())
    lines.append(f"best: {result['best_format']} ({ratios} the tf model)")
  lines.append(f"input: uint8 {result['input_hw'][0]}x{result['input_hw'][1]}, model "
               f"{result['image_size']}x{result['image_size']}")
  lines.append(f"machine: {result['machine']}; load average {result['load_average']}")
  return "\n".join(lines)
