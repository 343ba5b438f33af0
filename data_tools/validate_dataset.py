r"""Checks a COCO-format detection data set before it becomes TFRecords; repairs on request.

  python -m data_tools.validate_dataset --image_dir=DIR --object_annotations_file=FILE \
      [--max_instances=100] [--repair | --clip_boxes --drop_bad_annotations ...] \
      [--output_annotations_file=REPAIRED.json]

Every image is fully decoded (truncated files are caught) with EXIF orientation applied;
every annotation is checked (box degenerate or outside the image, unknown category or image,
duplicate ids, more than max_instances per image). Prints a table of problems by kind with
counts, example ids and the fix, then a summary. Exit status: 0 when no error is left, 1 when
errors that would corrupt training remain, 2 when the input cannot be read at all.
Nothing is repaired unless asked; --output_annotations_file writes the (repaired) JSON.
"""
import json
import sys

from absl import app, flags

from detlab.data import dataset_checks
from detlab.data.dataset_checks import Repairs, ValidationReport
from detlab.progress import Progress

FLAGS = flags.FLAGS


def define_input_flags() -> None:
  """--image_dir and --object_annotations_file (TF Model Garden's names)."""
  flags.DEFINE_string("image_dir", None, "Directory of the image files (local or gs://).")
  flags.DEFINE_string("object_annotations_file", None, "COCO instances JSON.")


def define_check_flags() -> None:
  """The validator's options and repair switches, shared with the converters."""
  flags.DEFINE_integer("max_instances", 100, "Warn about images with more annotations.")
  flags.DEFINE_float("box_tolerance", 1.0, "Pixels a box may extend past the image before "
                     "it is an error (less: a warning).")
  flags.DEFINE_bool("ignore_exif_orientation", False, "Use the stored pixels as they are "
                    "(default: apply EXIF orientation; boxes are in the upright frame).")
  flags.DEFINE_bool("repair", False, "All repairs: --clip_boxes --drop_bad_annotations "
                    "--drop_bad_images --renumber_annotation_ids.")
  flags.DEFINE_bool("clip_boxes", False, "Clip boxes to the image; drop those left empty.")
  flags.DEFINE_bool("drop_bad_annotations", False, "Drop annotations with a degenerate box, "
                    "an unknown category or image, or a bad segmentation.")
  flags.DEFINE_bool("drop_bad_images", False, "Drop missing/corrupt images, size "
                    "mismatches and duplicated image ids, with their annotations.")
  flags.DEFINE_bool("renumber_annotation_ids", False, "Give duplicated annotation ids new "
                    "unique ids.")
  flags.DEFINE_string("output_annotations_file", None, "Write the checked (and repaired) "
                      "COCO JSON here, e.g. for evaluation against the converted records.")
  flags.DEFINE_integer("num_workers", 0, "Threads (0: min(8, CPU cores) to check images, "
                       "min(num_shards, CPU cores) to write shards).")


def repairs_from_flags() -> Repairs:
  if FLAGS.repair:
    return Repairs.all()
  return Repairs(FLAGS.clip_boxes, FLAGS.drop_bad_annotations, FLAGS.drop_bad_images,
                 FLAGS.renumber_annotation_ids)


def load_json(path: str) -> dict:
  """A JSON file (local or remote); errors name the file and the flag."""
  try:
    data = dataset_checks.read_bytes(path)
  except dataset_checks.ImageError as e:
    raise FileNotFoundError(f"--object_annotations_file: {e}") from e
  try:
    return json.loads(data)
  except ValueError as e:
    raise ValueError(f"--object_annotations_file {path} is not valid JSON: {e}") from e


def write_json(data: dict, path: str) -> None:
  """Local files without TensorFlow (the validator starts in a second), others via gfile."""
  text = json.dumps(data)
  if "://" in path:
    import tensorflow as tf  # only for remote file systems
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
  else:
    with open(path, "w") as f:
      f.write(text)


def repair_hint(report: ValidationReport) -> str:
  """The repair switches that would fix the errors left, or why none can."""
  needed = sorted({dataset_checks.KINDS[p.kind].repair_flag or "" for p in report.errors})
  if "" in needed:
    return "Some errors have no automatic repair: fix the JSON (see the table)."
  return "Repair them with --" + " --".join(needed) + " (or --repair for all)."


def check_dataset(coco: dict, image_dir: str, max_instances: int = 100,
                  repairs: Repairs | None = None, check_masks: bool = False,
                  apply_exif: bool = True, box_tolerance: float = 1.0, workers: int = 0,
                  stream=sys.stdout, source: str = "") -> ValidationReport:
  """validate_coco with a progress line, then the table and the summary on `stream`;
  `source` (the JSON's path) names the file in the messages."""
  images = coco.get("images") if isinstance(coco, dict) else None
  progress = Progress(len(images) if isinstance(images, list) else 0, unit="images")
  report = dataset_checks.validate_coco(
      coco, image_dir, max_instances, repairs, check_masks=check_masks,
      apply_exif=apply_exif, box_tolerance=box_tolerance, workers=workers,
      on_image=lambda done, total: progress.update(done, prefix="[validate] "),
      source=source)
  print(report.table(), file=stream)
  print(report.summary(), file=stream)
  if not report.ok:
    print(f"{len(report.errors)} errors would corrupt training. {repair_hint(report)}",
          file=stream)
  return report


def validate(image_dir: str, annotations_file: str, max_instances: int = 100,
             repairs: Repairs | None = None, output_annotations_file: str | None = None,
             apply_exif: bool = True, box_tolerance: float = 1.0, workers: int = 0,
             stream=sys.stdout) -> int:
  """The tool without flags: returns the exit status (0 ok, 1 errors left, 2 unreadable)."""
  try:
    coco = load_json(annotations_file)
    report = check_dataset(coco, image_dir, max_instances, repairs, apply_exif=apply_exif,
                           box_tolerance=box_tolerance, workers=workers, stream=stream,
                           source=annotations_file)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=stream)
    return 2
  if output_annotations_file:
    write_json(report.dataset, output_annotations_file)
    print(f"Wrote the checked annotations to {output_annotations_file}.", file=stream)
  return 0 if report.ok else 1


def main(argv) -> None:
  del argv
  if not FLAGS.image_dir or not FLAGS.object_annotations_file:
    raise app.UsageError("--image_dir and --object_annotations_file are required.")
  sys.exit(validate(FLAGS.image_dir, FLAGS.object_annotations_file, FLAGS.max_instances,
                    repairs_from_flags(), FLAGS.output_annotations_file,
                    not FLAGS.ignore_exif_orientation, FLAGS.box_tolerance,
                    FLAGS.num_workers))


if __name__ == "__main__":
  define_input_flags()
  define_check_flags()
  app.run(main)
