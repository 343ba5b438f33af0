r"""Train and evaluate a detector from gin files.

  python -m detlab.train --gin_file=efficientdet_d0.gin --model_dir=/tmp/d0

--gin_file takes a name from gin_configs/ or a path (repeatable); --gin_bindings overrides
(repeatable), e.g. --gin_bindings="Schedule.batch_size = 64".

Exit codes: 0 done; 1 an error that names its fix; 42 (PREEMPTED_EXIT_CODE) stopped on
SIGTERM, during training or any evaluation, after saving a checkpoint: running the same
command again resumes from it. --mode=eval --continuous evaluates each new checkpoint in
--model_dir (e.g. beside a training job) until the last step or --eval_timeout seconds
without a new one; any --mode=eval writes only under model_dir/eval/. A second training
process on a model_dir that has a live writer stops with an error naming it.
"""
import sys

from absl import app, flags, logging

from detlab import config
from detlab.training.checkpoint import CheckpointMismatchError
from detlab.training.initialize import InitCheckpointError
from detlab.training.loop import NonFiniteLossError
from detlab.training.preemption import PREEMPTED_EXIT_CODE
from detlab.training.writer import ModelDirLockedError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin file name (in gin_configs/) or path.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings that override the files.")
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries and results.")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                  "What to run.")
flags.DEFINE_bool("continuous", False, "With --mode=eval: evaluate each new checkpoint.")
flags.DEFINE_float("eval_timeout", 3600.0, "With --continuous: stop after this many seconds "
                   "without a new checkpoint.")
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
    results = train(FLAGS.model_dir, FLAGS.mode, continuous=FLAGS.continuous,
                    eval_timeout_s=FLAGS.eval_timeout)
  except (FileNotFoundError, CheckpointMismatchError, InitCheckpointError,
          NonFiniteLossError, ModelDirLockedError) as error:
    # Errors that name their fix: print them plainly instead of a traceback.
    print(f"detlab.train: error: {error}", file=sys.stderr)
    sys.exit(1)
  if results.get("preempted"):
    print(f"detlab.train: stopped on SIGTERM; checkpoint saved in {FLAGS.model_dir}. Run the "
          f"same command again to resume (exit code {PREEMPTED_EXIT_CODE}: preempted).",
          file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main)
