"""`python -m detlab.benchmark`: flags and main (see the package docstring)."""
import dataclasses
import json

from absl import app, flags

from detlab import config
from detlab.benchmark import detection, tasks
from detlab.benchmark.backbone import measure_backbone
from detlab.benchmark.profile import format_profile
from detlab.benchmark.report import format_table

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", ["efficientdet_d0.gin"], "Model gin file(s).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_list("only", [], "Subset of measurements (e.g. params,gmacs).")
flags.DEFINE_float("seconds", 5.0, "Minimum timed seconds per measurement.")
flags.DEFINE_integer("train_batch", 0, "Batch size of the training-step measurement (0: the "
                     "task's default: 8 for detection and segmentation, 32 for classification).")
flags.DEFINE_string("backbone", None, "Measure this registered backbone's classifier "
                    "(include_top=True) instead of the gin detector, e.g. efficientnetv2_s.")
flags.DEFINE_bool("input_pipeline", False, "Also time the training input pipeline "
                  "(DetectionTask.train_input) beside the training step: adds input_img_s and "
                  "train_img_s_bs8 to the measurements (detection gin files).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy of the measured model (train.precision's choices).")
flags.DEFINE_integer("image_size", 0, "Classifier image size for --backbone (0: the variant's "
                     "native resolution).")
flags.DEFINE_bool("profile", False, "Detection gin files: after the measurements, the op-level "
                  "top 10 (kernel ms per call, share, runs) of network inference at batch 8 and "
                  "1 and of the training step, from a TF profiler trace (benchmark/profile.py).")
flags.DEFINE_string("exported", None, "An export directory (python -m detlab.export "
                    "--output_dir): end-to-end img/s of each format in it and of the in-process "
                    "TF model at batch 1 and 8 (detlab/benchmark/exported.py).")
flags.DEFINE_list("input_hw", [], "--exported: height,width of the uint8 images fed (e.g. "
                  "480,640 for VGA camera frames; default the model's square input size).")


def _wanted(choices, default, aliases=None) -> set:
  """--only (or `default`) checked against `choices`; `aliases` rename entries first."""
  aliases = aliases or {}
  wanted = {aliases.get(name, name) for name in FLAGS.only} or set(default)
  unknown = wanted - set(choices)
  if unknown:
    raise app.UsageError(f"Unknown --only entries {sorted(unknown)}; choose from {choices}.")
  return wanted


def run_benchmark() -> dict:
  """The measurements the flags ask for (parses the gin files unless --backbone)."""
  if FLAGS.backbone:
    wanted = _wanted(detection.NETWORK_ONLY, detection.NETWORK_ONLY)
    return measure_backbone(FLAGS.backbone, wanted, FLAGS.seconds, FLAGS.image_size)
  config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
  from detlab.training.setup import configured_task  # pylint: disable=import-outside-toplevel
  task = configured_task()
  if task.name in ("detection", "instance_segmentation"):
    masks = detection.MASK if task.name == "instance_segmentation" else ()
    wanted = _wanted(detection.ALL + masks + (detection.INPUT,), detection.ALL + masks,
                     {tasks.TRAIN: "train_img_s_bs8"})
    if FLAGS.input_pipeline:
      wanted |= {detection.INPUT, "train_img_s_bs8"}
    return detection.measure(wanted, FLAGS.seconds, FLAGS.train_batch or 8, FLAGS.precision,
                             profile=FLAGS.profile)
  if FLAGS.profile:
    raise app.UsageError("--profile profiles detection gin files only.")
  if task.name not in tasks.MEASUREMENTS:
    raise app.UsageError(f"No benchmark for the {task.name!r} task; tasks with one: "
                         f"{sorted(tasks.MEASUREMENTS)} and detection.")
  if FLAGS.input_pipeline:
    raise app.UsageError("--input_pipeline times detection input pipelines only; drop it for "
                         f"the {task.name} gin file.")
  choices = tasks.MEASUREMENTS[task.name]
  wanted = _wanted(choices, choices, {n: tasks.measurement_name(n) for n in FLAGS.only})
  return tasks.measure_task(task, wanted, FLAGS.seconds, FLAGS.train_batch or None,
                            FLAGS.precision)


def main(argv):
  del argv
  if FLAGS.exported:
    from detlab.benchmark import exported  # pylint: disable=import-outside-toplevel
    result = exported.measure_exported(FLAGS.exported, FLAGS.seconds,
                                       input_hw=exported.parse_input_hw(FLAGS.input_hw))
    print(json.dumps(result) if FLAGS.json else exported.format_speed_table(result), flush=True)
    return
  result = run_benchmark()
  profiles = result.pop("op_profiles", {})
  if FLAGS.json:  # one JSON object: the profiles' top 10 under "op_profiles"
    if profiles:
      result["op_profiles"] = {title: [dataclasses.asdict(row) for row in rows[:10]]
                               for title, rows in profiles.items()}
    print(json.dumps(result), flush=True)
    return
  print(format_table(result), flush=True)
  for title, rows in profiles.items():
    print(format_profile(title, rows), flush=True)


if __name__ == "__main__":
  app.run(main)
