"""What `python -m detlab.export` does: checks, model loading, folding, one writer per format.

Checks come first and fail fast with the fix (unknown format, no checkpoint, no gin config,
non-empty output directory, missing calibration data), before any model is built.
"""
import importlib.util
import os

from absl import logging
import tensorflow as tf

from detlab import api, config
from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data import label_map
from detlab.export.fold import count_batch_norms, fold_batch_norms
from detlab.export.saved_model import INPUT_TYPES, DetectionServing, export_saved_model
from detlab.layers.fake_quant import is_quantization_aware, quantize_model, ranges_seen
from detlab.models.instance_segmentation import has_mask_branch
from detlab.io import write_json
from detlab.training import bn_reestimation
from detlab.training.run_seed import saved_seed
from detlab.training.setup import Schedule, train_argument

FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8", "openvino_fp32",
           "openvino_int8", "onnx_fp32", "onnx_int8")
# Formats this version writes (all of FORMATS; kept apart so a planned one can be refused).
IMPLEMENTED_FORMATS = FORMATS
# The ones that read calibration images.
INT8_FORMATS = ("tflite_int8", "openvino_int8", "onnx_int8")
# The formats that carry an instance model's mask branch (OpenVINO: a second IR, mask.xml, run
# after the TF NMS). The INT8 ones do not, for the measured reasons in MASK_REFUSALS.
MASK_FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "openvino_fp32")
MASK_REFUSALS = {  # instance_segmentation_d0_shapes.gin demo, 300 val images, 100 calibration
    "openvino_int8": "NNCF INT8 of the network and mask IRs lost 0.44 mask AP (0.599 -> 0.154) "
                     "and 0.076 box AP against the TF model, past the 0.02 INT8 parity bound",
    "tflite_int8": "the LiteRT INT8 converter fails on the mask model ('scale out of "
                   "expressed type range': a calibrated tensor with an infinite or zero range; "
                   "keeping the RoIAlign float as well did not avoid it)",
}
CONFIG_FILES = ("operative_config.gin", "config.gin")  # preferred first


class ExportError(ValueError):
  """A user error in the export request; the message names the fix."""


def output_paths(output_dir: str, formats) -> dict[str, str]:
  """{format: the path it writes} inside output_dir."""
  names = {"saved_model": "saved_model", "tflite_fp32": "model_fp32.tflite",
           "tflite_fp16": "model_fp16.tflite", "tflite_int8": "model_int8.tflite",
           "openvino_fp32": "openvino_fp32", "openvino_int8": "openvino_int8",
           "onnx_fp32": "model_fp32.onnx", "onnx_int8": "model_int8.onnx"}
  return {f: os.path.join(output_dir, names[f]) for f in formats}


def check_formats(formats) -> list[str]:
  formats = [f.strip() for f in formats if f.strip()]
  if not formats:
    raise ExportError(f"--formats is empty; give one or more of {', '.join(FORMATS)}.")
  for name in formats:
    if name not in FORMATS:
      raise ExportError(f"Unknown format {name!r} in --formats; choose from "
                        f"{', '.join(FORMATS)}.")
    if name not in IMPLEMENTED_FORMATS:
      raise ExportError(f"Format {name!r} is not implemented in this version of detlab; "
                        f"available: {', '.join(IMPLEMENTED_FORMATS)}.")
  # module: (the formats that need it, detlab's extra, the extra's packages)
  needs = {"openvino": ("openvino_", "openvino", "openvino nncf"),
           "nncf": ("openvino_int8", "openvino", "openvino nncf"),
           "tf2onnx": ("onnx_", "onnx", "tf2onnx onnxruntime"),
           "onnxruntime": ("onnx_", "onnx", "tf2onnx onnxruntime")}
  for module, (prefix, extra, packages) in needs.items():  # before any model is built
    wanted = [f for f in formats if f.startswith(prefix)]
    if wanted and importlib.util.find_spec(module) is None:
      raise ExportError(f"{', '.join(wanted)} need the {module} package: pip install "
                        f"'detlab[{extra}]' (or pip install {packages}), or leave "
                        f"{', '.join(wanted)} out of --formats.")
  return list(dict.fromkeys(formats))


def check_checkpoint(model_dir: str) -> str:
  """The latest checkpoint prefix in model_dir, or an error saying how to get one."""
  if not tf.io.gfile.isdir(model_dir):
    raise ExportError(f"--model_dir={model_dir} does not exist; point it at the --model_dir "
                      "of a training run (python -m detlab.train --model_dir=...).")
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is None:
    listed = tf.io.gfile.glob(os.path.join(model_dir, "ckpt-*.index"))
    if listed:  # a state file that is missing: the newest ckpt-N found by listing
      latest = max(listed, key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))[:-6]
  if latest is None:
    raise ExportError(
        f"No checkpoint in --model_dir={model_dir} (no ckpt-N.index files). Train first, e.g. "
        f"python -m detlab.train --gin_file=efficientdet_d0.gin --model_dir={model_dir}, or "
        "point --model_dir at a directory that holds a training run's checkpoints.")
  return latest


def model_gin_files(model_dir: str, gin_files) -> list[str]:
  """--gin_file's if given, else the model_dir's operative_config.gin (or config.gin)."""
  if gin_files:
    return list(gin_files)
  for name in CONFIG_FILES:
    path = os.path.join(model_dir, name)
    if tf.io.gfile.exists(path):
      return [path]
  raise ExportError(f"--model_dir={model_dir} holds neither {' nor '.join(CONFIG_FILES)}; "
                    "pass the gin files that trained the model with --gin_file=... "
                    "(and --gin_bindings=...).")


def check_output_dir(output_dir: str, overwrite: bool) -> None:
  """Refuses a non-empty output_dir unless overwrite."""
  if tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir) and not overwrite:
    raise ExportError(f"--output_dir={output_dir} is not empty; pass --overwrite to replace "
                      "the exported files in it, or choose an empty directory.")


def clear_outputs(output_dir: str, paths: dict) -> None:
  """Removes what this export writes (other files in output_dir stay)."""
  for path in [*paths.values(), os.path.join(output_dir, "export.json")]:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  tf.io.gfile.makedirs(output_dir)


def check_mask_formats(model, formats) -> None:
  """Refuses, for a model with a mask branch, the formats that would drop its masks."""
  boxes_only = [f for f in formats if f not in MASK_FORMATS]
  if has_mask_branch(model) and boxes_only:
    raise ExportError(
        f"This is an instance-segmentation model: {', '.join(boxes_only)} do not carry its "
        f"mask branch in this version of detlab (only {', '.join(MASK_FORMATS)} serve "
        f"detection_masks). Leave {', '.join(boxes_only)} out of --formats."
        + "".join(f" {name}: {MASK_REFUSALS[name]}." for name in boxes_only
                  if name in MASK_REFUSALS))


# INT8 formats a quantization-aware model does not export, with the measured reason.
QAT_REFUSALS = {
    "tflite_int8": "LiteRT's converter, given a fake-quantised graph, also quantises the "
                   "post-processing's sigmoid scores to 256 levels (a random tiny detector "
                   "kept 1 of its 100 detections); export tflite_int8 from the float model_dir "
                   "the fine-tune started from (calibrated), or use openvino_int8 / onnx_int8 "
                   "here",
}


def check_quantization_aware(model, fold: bool, formats) -> bool:
  """Whether `model` was fine-tuned with fake quantisation (its INT8 formats then use the
  trained ranges); such a model must have seen training batches and is exported folded."""
  if not is_quantization_aware(model):
    return False
  refused = [f for f in formats if f in QAT_REFUSALS]
  if refused:
    raise ExportError(f"A quantization-aware model does not export {', '.join(refused)}: "
                      + "; ".join(QAT_REFUSALS[f] for f in refused) + ".")
  if not ranges_seen(model.fake_quant):
    raise ExportError(
        "This quantization-aware model has no trained ranges (its checkpoint predates the "
        "first QAT step): train it with quantization_aware_training.gin first, or export "
        "the float model_dir it started from.")
  if not fold:
    raise ExportError("A quantization-aware model exports with its batch norms folded (its "
                      "ranges are those of the folded convs): drop --fold_batch_norms=false.")
  return True


def calibration_files(file_pattern: str | None) -> list[str]:
  """The eval TFRecords INT8 calibration reads, or an error naming the flag that sets them."""
  files = []
  for pattern in (file_pattern or "").split(","):
    if pattern.strip():
      files += tf.io.gfile.glob(pattern.strip())
  if not files:
    raise ExportError(
        f"INT8 calibration needs the eval TFRecords, but {file_pattern!r} matches no file. "
        "Pass --calibration_file_pattern='/path/val-*.tfrecord' (or fix EVAL_FILE_PATTERN "
        "with --gin_bindings), or leave the int8 formats out of --formats.")
  return sorted(files)


def category_names(task) -> dict | None:
  """{category id: name} from the detection task's label map (None without one)."""
  if not task.label_map_file or not tf.io.gfile.exists(task.label_map_file):
    return None
  return label_map.category_names(task.label_map_file, None, 0)


def reestimate_batch_norms(model, task, model_dir: str, gin_files, gin_bindings) -> dict | None:
  """Precise BN before export, as the model_dir's evaluations ran it (when its gin config
  binds train.bn_reestimation; training/bn_reestimation.py): num_batches
  training batches of its Schedule.batch_size from the task's training input, seeded by
  the run's seed.json, so the exported statistics are those metrics.json was measured with
  (the same batches; training/experiment.py). `model` is the exporter's own copy: its
  statistics stay re-estimated, the checkpoint is not touched. Skipped with a warning (the
  trained statistics are exported) when the training records cannot be read here. Sets
  TF's global seed to the run's (as train() does). Returns the summary (None: not run)."""
  with api.isolated_gin_config():
    config.parse_gin(list(gin_files), list(gin_bindings))
    settings = train_argument("bn_reestimation")
    schedule = train_argument("schedule", Schedule())
  if settings is None or not settings.num_batches:
    return None
  seed = saved_seed(model_dir)
  seed = 0 if seed is None else seed  # a model_dir without seed.json (made by hand)
  # train() set TF's global seed to the run's seed before it built any stream, and an op
  # seed draws differently under another global seed: set it so, or the batches differ.
  tf.random.set_seed(seed)
  try:
    batches = task.train_dataset(model, None, schedule.batch_size, seed, 0)
  except (ValueError, tf.errors.OpError) as error:
    logging.warning("BN re-estimation skipped: the training batches cannot be read (%s); "
                    "exporting the trained statistics, not those metrics.json was measured "
                    "with.", error)
    return None
  reestimator = bn_reestimation.BatchNormReestimator(model)
  summary = reestimator.estimate(batches, settings.num_batches)
  reestimator.assign(summary["statistics"])
  summary.update(layers=len(summary["statistics"]), of=len(reestimator.layers))
  bn_reestimation.log_summary(summary)
  return summary


def export(model_dir: str, output_dir: str, formats=("saved_model",),
           input_type: str = "image_tensor", batch_size: int | None = None,
           use_ema: bool = True, calibration_steps: int = 100,
           calibration_file_pattern: str | None = None, overwrite: bool = False,
           gin_files=(), gin_bindings=(), fold: bool = True) -> dict[str, str]:
  """Exports the model of model_dir in each format; returns {format: path written}."""
  formats = check_formats(formats)
  if input_type not in INPUT_TYPES:
    raise ExportError(f"--input_type must be one of {INPUT_TYPES}, got {input_type!r}.")
  if batch_size is not None and batch_size < 1:
    raise ExportError(f"--batch_size must be >= 1 (or unset for any size), got {batch_size}.")
  checkpoint = check_checkpoint(model_dir)
  files = model_gin_files(model_dir, gin_files)
  paths = output_paths(output_dir, formats)
  check_output_dir(output_dir, overwrite)
  model = api.load_detector(files, gin_bindings, checkpoint=checkpoint, use_ema=use_ema)
  check_mask_formats(model, formats)
  quantization_aware = check_quantization_aware(model, fold, formats)
  eval_input, task = api.inference_setup(model)  # task: the (instance model's) DetectionTask
  # A QAT model's BN is frozen at the statistics its ranges were trained with: no re-estimation.
  reestimated = None if quantization_aware else reestimate_batch_norms(
      model, task, model_dir, files, gin_bindings)
  calibration = None
  if any(f in INT8_FORMATS for f in formats) and not quantization_aware:
    calibration = calibration_files(calibration_file_pattern or eval_input.file_pattern)
  clear_outputs(output_dir, paths)
  # The trained model's (folding keeps it; read before, so export.json records what trained).
  convention = input_convention(model, default=IMAGENET_MEAN_STD)
  bns = count_batch_norms(model)
  int8_serving = None
  if quantization_aware:  # INT8 formats: the folded model with its trained fake quantisation
    quantized = fold_batch_norms(model)
    quantized.fake_quant = quantize_model(quantized, model.fake_quant, freeze_batch_norms=False)
    int8_serving = DetectionServing(quantized, task.postprocess_config, eval_input, convention)
  if fold:
    model = fold_batch_norms(model)
    logging.info("Folded %d batch norms into their convs.", bns - count_batch_norms(model))
  serving = DetectionServing(model, task.postprocess_config, eval_input, convention)
  int8_serving = int8_serving or serving
  written = {}
  if "saved_model" in formats:
    export_saved_model(serving, paths["saved_model"], input_type, batch_size)
    written["saved_model"] = paths["saved_model"]
  tflite_formats = [f for f in formats if f.startswith("tflite_")]
  if tflite_formats:
    from detlab.export import tflite  # pylint: disable=import-outside-toplevel
    for name in tflite_formats:
      written[name] = tflite.export_tflite(
          serving, paths[name], name.split("_")[1], batch_size or 1,
          calibration_files=calibration, calibration_steps=calibration_steps)
  openvino_formats = [f for f in formats if f.startswith("openvino_")]
  if openvino_formats:
    from detlab.export import openvino  # pylint: disable=import-outside-toplevel
    for name in openvino_formats:  # IR input batch: --batch_size, or dynamic when unset
      openvino.export_openvino(int8_serving if name in INT8_FORMATS else serving,
                               paths[name], name.split("_")[1], batch_size,
                               calibration_files=calibration,
                               calibration_steps=calibration_steps)
      written[name] = paths[name]  # the directory holding model.xml
  onnx_formats = [f for f in formats if f.startswith("onnx_")]
  if onnx_formats:
    from detlab.export import onnx  # pylint: disable=import-outside-toplevel
    # One conversion for both precisions (a QAT model: one per serving model); input batch:
    # --batch_size, or dynamic when unset.
    groups = ([(serving, [f for f in onnx_formats if f not in INT8_FORMATS]),
               (int8_serving, [f for f in onnx_formats if f in INT8_FORMATS])]
              if quantization_aware else [(serving, onnx_formats)])
    for source, names in groups:
      if names:
        onnx_files = onnx.export_onnx(source, {f.split("_")[1]: paths[f] for f in names},
                                      batch_size, calibration_files=calibration,
                                      calibration_steps=calibration_steps)
        written.update({f"onnx_{precision}": path for precision, path in onnx_files.items()})
  info = {"model_dir": model_dir, "checkpoint": checkpoint, "weights": "EMA" if use_ema else
          "raw", "gin_files": files, "gin_bindings": list(gin_bindings),
          "formats": {f: os.path.basename(p) for f, p in written.items()},
          "input_type": input_type, "batch_size": batch_size,
          "image_size": model.anchors.image_size, "num_classes": model.num_classes,
          "batch_norms_folded": bool(fold), "category_names": category_names(task),
          # INT8 from quantization-aware training's ranges (no calibration) or calibrated
          "int8_ranges": "quantization-aware training" if quantization_aware else "calibration",
          "mask_size": model.mask_size if has_mask_branch(model) else None,  # detection_masks' M
          # (pixel - mean) / std inside every format; the LiteRT/OpenVINO letterbox pads with mean
          "input_mean": list(convention.mean), "input_std": list(convention.std),
          **bn_reestimation.record(reestimated)}
  write_json(os.path.join(output_dir, "export.json"), info, indent=2)
  return written
