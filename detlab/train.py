r"""Train and evaluate a detector from gin files.

  python -m detlab.train --gin_file=efficientdet_d0.gin --model_dir=/tmp/d0

--gin_file takes a name from gin_configs/ or a path (repeatable); --gin_bindings overrides
(repeatable), e.g. --gin_bindings="Schedule.batch_size = 64".
"""
import sys

from absl import app, flags, logging

from detlab import config
from detlab.training.checkpoint import CheckpointMismatchError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin file name (in gin_configs/) or path.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings that override the files.")
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries and results.")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                  "What to run.")
flags.mark_flag_as_required("model_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.gin_file:
    raise app.UsageError("Give at least one --gin_file; available: " +
                         ", ".join(config.available_gin_files()))
  logging.set_verbosity(logging.INFO)
  try:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    from detlab.training.experiment import train  # pylint: disable=import-outside-toplevel
    train(FLAGS.model_dir, FLAGS.mode)
  except (FileNotFoundError, CheckpointMismatchError) as error:
    # Errors that name their fix: print them plainly instead of a traceback.
    print(f"detlab.train: error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
