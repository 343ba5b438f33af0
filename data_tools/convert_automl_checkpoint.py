r"""Converts a google/automl EfficientDet checkpoint into a detlab model_dir.

  python -m data_tools.convert_automl_checkpoint --checkpoint=efficientdet-d0 \
      --gin_file=efficientdet_d0.gin --model_dir=/tmp/d0_automl [--use_ema=true]

EfficientDet-Lite0..4 and Lite3x bundles (efficientdet-liteN) convert the same way with their
gin files (--gin_file=efficientdet_lite0.gin ...).

--checkpoint: the unpacked efficientdet-dN.tar.gz directory (or its `model` prefix). The
model_dir then holds ckpt-0 (model, EMA shadows, a fresh optimizer at step 0),
variables.json and config.gin, as a training run writes them, so that
  python -m detlab.train --mode=eval --gin_file=efficientdet_d0.gin --model_dir=OUT
evaluates it, export and `detlab.api.load_detector(..., checkpoint=OUT)` load it, and
`train.init_checkpoint='OUT'` fine-tunes from it (any num_classes; the automl directory itself
works there too).

--use_ema=true (default): the model weights are the automl EMA shadows, the weights the
reference evaluates and fine-tunes from; the detlab EMA holds them too. --use_ema=false: the
model weights are the raw training weights and the detlab EMA holds the automl shadows.
Every variable must map both ways, or the tool stops with the list of names; a checkpoint of
another EfficientDet-Dk (or Lite) is an error naming that model.
"""
import os
import sys
import time

from absl import app, flags, logging
import tensorflow as tf

from detlab import api
from detlab.io import write_json, write_text
from detlab.progress import format_duration
from detlab.training.checkpoint import CheckpointKeeper
from detlab.training.ema import WeightAverage
from detlab.training.optimizer import OptimizerConfig, build_optimizer
from detlab.weights.automl_checkpoint import AutomlCheckpointError, load_automl_checkpoint
from detlab.weights.automl_names import UnsupportedModelError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a tool: tests import `convert` beside other flag owners."""
  flags.DEFINE_string("checkpoint", None, "automl checkpoint directory or prefix.")
  flags.DEFINE_multi_string("gin_file", [], "Detector gin file (e.g. efficientdet_d0.gin).")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. \"NUM_CLASSES = 90\".")
  flags.DEFINE_string("model_dir", None, "Output detlab model_dir (must hold no checkpoint).")
  flags.DEFINE_bool("use_ema", True, "Model weights := the automl EMA shadows (else raw).")


def convert(checkpoint: str, gin_files, gin_bindings, model_dir: str,
            use_ema: bool = True) -> dict:
  """Writes the detlab model_dir; returns a summary (also saved as conversion.json)."""
  started = time.monotonic()
  if tf.train.latest_checkpoint(model_dir):
    raise FileExistsError(f"{model_dir} already holds a checkpoint; choose a new --model_dir.")
  model = api.load_detector(gin_files, gin_bindings)
  built = time.monotonic() - started
  # EMA shadows first: with use_ema=false the model ends up with the raw weights.
  average = WeightAverage(model)
  ema = load_automl_checkpoint(model, checkpoint, use_ema=True)
  average.reset()  # shadows := the automl EMA values (raw where a bundle has none)
  raw = load_automl_checkpoint(model, checkpoint, use_ema=False) if not use_ema else ema
  optimizer, _ = build_optimizer(OptimizerConfig(), 64, 1, 0)
  _ = optimizer.iterations  # created on first access; training restores it (step 0)
  keeper = CheckpointKeeper(model_dir, model, max_to_keep=1, optimizer=optimizer,
                            ema=average.shadows)
  path = keeper.save(0)
  write_text(os.path.join(model_dir, "config.gin"), api.detector_config(model))
  summary = {"source": ema["checkpoint"], "detlab_checkpoint": path,
             "model_weights": "ema" if use_ema else "raw", "ema_weights": "ema",
             "variables": ema["variables"], "variables_with_automl_ema": ema["from_ema"],
             "parameters": int(model.count_params()), "build_seconds": round(built, 2),
             "read_seconds": round(ema["seconds"] + (raw["seconds"] if raw is not ema else 0),
                                   2),
             "seconds": round(time.monotonic() - started, 2)}
  write_json(os.path.join(model_dir, "conversion.json"), summary)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.checkpoint or not FLAGS.model_dir or not FLAGS.gin_file:
    raise app.UsageError("--checkpoint, --gin_file and --model_dir are required.")
  logging.set_verbosity(logging.INFO)
  try:
    summary = convert(FLAGS.checkpoint, FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.model_dir,
                      FLAGS.use_ema)
  except (AutomlCheckpointError, UnsupportedModelError, FileExistsError,
          FileNotFoundError) as error:
    print(f"convert_automl_checkpoint: error: {error}", file=sys.stderr)
    sys.exit(1)
  print(f"Converted {summary['source']} -> {summary['detlab_checkpoint']}: "
        f"{summary['variables']} variables ({summary['parameters']:,} parameters), model "
        f"weights {summary['model_weights']}, in {format_duration(summary['seconds'])} "
        f"({summary['seconds']:.1f} s, of which building the model "
        f"{summary['build_seconds']:.1f} s).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
