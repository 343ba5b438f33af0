r"""Export a trained detector for serving.

  python -m detlab.export --model_dir=/tmp/d0 --output_dir=/tmp/d0_export \
      [--formats=saved_model,tflite_fp32,tflite_fp16,tflite_int8,openvino_fp32,openvino_int8,
                 onnx_fp32,onnx_int8] \
      [--input_type=image_tensor|encoded_image|tf_example] [--batch_size=N] [--use_ema=true] \
      [--calibration_steps=K] [--overwrite]

Reads the model's operative gin config from --model_dir (operative_config.gin, else
config.gin) unless --gin_file is given, loads the latest checkpoint's EMA weights (unless
--use_ema=false), folds every conv-BN pair, and writes OUT/saved_model/ (serving_default:
raw images in, OD API detections in original pixels out; loads without detlab) and the
LiteRT files OUT/model_{fp32,fp16,int8}.tflite and the OpenVINO IRs
OUT/openvino_{fp32,int8}/model.xml (pip install 'detlab[openvino]') and the ONNX files
OUT/model_{fp32,int8}.onnx (pip install 'detlab[onnx]'; the whole detector, soft-NMS
included, in the file). OUT/export.json records what was written.

INT8 formats are calibrated on --calibration_steps eval images, except for a model
fine-tuned with quantization_aware_training.gin: openvino_int8 and onnx_int8 then take the
ranges it trained (FakeQuantize / QuantizeLinear ops; no calibration; tflite_int8 refused).
"""
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A training run's model_dir (checkpoints + gin config).")
flags.DEFINE_string("output_dir", None, "Where the exported files go (empty, or --overwrite).")
flags.DEFINE_list("formats", ["saved_model"], "Comma-separated: saved_model, tflite_fp32, "
                  "tflite_fp16, tflite_int8, openvino_fp32, openvino_int8, onnx_fp32, "
                  "onnx_int8.")
flags.DEFINE_enum("input_type", "image_tensor", ["image_tensor", "encoded_image", "tf_example"],
                  "SavedModel input: uint8 [B, H, W, 3], JPEG/PNG bytes [B], or serialized "
                  "tf.Example [B].")
flags.DEFINE_integer("batch_size", None, "Static batch size of the SavedModel input (unset: "
                     "any); LiteRT files use this or 1, OpenVINO IRs and ONNX files this "
                     "or any.")
flags.DEFINE_bool("use_ema", True, "Export the EMA weights (the ones evaluation reports).")
flags.DEFINE_integer("calibration_steps", 100, "Images from the eval TFRecords that calibrate "
                     "the INT8 ranges (tflite_int8, openvino_int8, onnx_int8).")
flags.DEFINE_string("calibration_file_pattern", None, "TFRecords for INT8 calibration (default: "
                    "the model's eval file pattern).")
flags.DEFINE_bool("overwrite", False, "Replace the exported files in a non-empty --output_dir.")
flags.DEFINE_bool("fold_batch_norms", True, "Fold each BN into its conv (same outputs, fewer "
                  "ops).")
flags.DEFINE_multi_string("gin_file", [], "Gin files instead of the model_dir's own config.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings that override the config.")
flags.mark_flags_as_required(["model_dir", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  from detlab import api  # pylint: disable=import-outside-toplevel
  from detlab.export import exporter  # pylint: disable=import-outside-toplevel
  try:
    written = exporter.export(
        FLAGS.model_dir, FLAGS.output_dir, FLAGS.formats, FLAGS.input_type, FLAGS.batch_size,
        FLAGS.use_ema, FLAGS.calibration_steps, FLAGS.calibration_file_pattern,
        FLAGS.overwrite, FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.fold_batch_norms)
  except (exporter.ExportError, api.CheckpointLoadError, FileNotFoundError) as error:
    print(f"detlab.export: error: {error}", file=sys.stderr)  # errors that name their fix
    sys.exit(1)
  for name, path in written.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  app.run(main)
