r"""Renders TFRecord examples with their boxes and class names to PNG files, to look at.

  python -m data_tools.inspect_dataset --file_pattern='data/coco/val-*.tfrecord' \
      --num_records=8 --output_dir=/tmp/inspect

Writes OUTPUT_DIR/record_<i>_<source_id>.png: the image as a training run decodes it
(detlab.data.tf_example.decode_example), boxes green (crowd boxes yellow, VOC-difficult ones
orange), each labelled "<id> <name>", instance masks tinted if the records have them. Names
come from --label_map, else label_map.json beside the records, else image/object/class/text.
Small images are scaled up (nearest neighbour) to at least --min_size pixels.
"""
import os
import sys

from absl import app, flags
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from detlab.data import tf_example
from detlab.data.detection_input import list_files
from detlab.data.label_map import LABEL_MAP_NAME, LabelMapError, read_label_map
from detlab.evaluation import visualize
from detlab.io import write_png
from detlab.progress import Progress

FLAGS = flags.FLAGS
CROWD, DIFFICULT = (255, 220, 0), (255, 140, 0)


def define_flags() -> None:
  flags.DEFINE_string("file_pattern", None, "TFRecord glob(s), comma-separated.")
  flags.DEFINE_integer("num_records", 8, "How many records to render (from the start).")
  flags.DEFINE_string("output_dir", "/tmp/detlab_inspect", "Where to write the PNGs.")
  flags.DEFINE_string("label_map", None, "label_map.json ({id: name}); default: beside "
                      "the records.")
  flags.DEFINE_integer("min_size", 256, "Scale small images up to this longer side.")


def load_label_map(path: str | None, files: list[str]) -> dict[int, str]:
  """{category id: name} from `path` (--label_map: an error if unusable), else from the
  label_map.json beside the first file when there is one, else {}."""
  if path:
    return read_label_map(path, flag="--label_map")
  beside = os.path.join(os.path.dirname(files[0]), LABEL_MAP_NAME)
  return read_label_map(beside) if tf.io.gfile.exists(beside) else {}


def render_record(serialized: tf.Tensor, names: dict[int, str], min_size: int = 256
                  ) -> tuple[Image.Image, dict]:
  """One serialized Example -> (annotated image, its decode_example dict as numpy)."""
  data = {k: v.numpy() for k, v in tf_example.decode_example(serialized).items()}
  extras = {k: v.numpy() for k, v in tf_example.decode_extras(serialized).items()}
  image, boxes = data["image"], data["boxes"]
  masks = extras["masks"]
  if len(masks) == len(boxes) and len(masks):
    tint = masks.max(0).astype(bool)[..., None]
    image = np.where(tint, (0.6 * image + 0.4 * np.array([255, 0, 255])).astype(np.uint8),
                     image)
  factor = max(1, -(-min_size // max(image.shape[:2])))
  if factor > 1:
    image = np.repeat(np.repeat(image, factor, 0), factor, 1)
    boxes = boxes * factor
  panel = visualize.draw_panel(image, boxes, [], [], [], names)
  draw = ImageDraw.Draw(panel)
  difficult = extras["difficult"] if len(extras["difficult"]) == len(boxes) else None
  texts = [t.decode() for t in extras["class_text"]]
  for i, ((y1, x1, y2, x2), label) in enumerate(zip(boxes, data["classes"])):
    colour = None
    if data["is_crowd"][i]:
      colour = CROWD
    elif difficult is not None and difficult[i]:
      colour = DIFFICULT
    if colour:
      draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
    name = names.get(int(label)) or (texts[i] if i < len(texts) else "?")
    draw.text((x1 + 2, y1 + 1), f"{label} {name}", fill=(255, 255, 255))
  return panel, data


def inspect(file_pattern: str, output_dir: str, num_records: int = 8,
            label_map: str | None = None, min_size: int = 256, stream=sys.stdout
            ) -> list[str]:
  """Renders the first num_records records; returns the PNG paths written."""
  files = list_files(file_pattern)
  names = load_label_map(label_map, files)
  tf.io.gfile.makedirs(output_dir)
  progress = Progress(num_records, unit="records")
  paths, objects, seen = [], 0, set()
  for i, serialized in enumerate(tf.data.TFRecordDataset(files).take(num_records)):
    panel, data = render_record(serialized, names, min_size)
    source_id = data["source_id"].decode() or str(i)
    path = os.path.join(output_dir, f"record_{i:03d}_{source_id}.png")
    write_png(path, panel)
    paths.append(path)
    objects += len(data["classes"])
    seen.update(int(c) for c in data["classes"])
    progress.update(i + 1, prefix="[inspect] ")
  print(f"Rendered {len(paths)} records ({objects} objects; category ids seen: "
        f"{sorted(seen)}) from {len(files)} files to {output_dir}.", file=stream)
  return paths


def main(argv) -> None:
  del argv
  if not FLAGS.file_pattern:
    raise app.UsageError("--file_pattern is required.")
  try:
    inspect(FLAGS.file_pattern, FLAGS.output_dir, FLAGS.num_records, FLAGS.label_map,
            FLAGS.min_size)
  except (FileNotFoundError, LabelMapError) as error:  # the label map; the message says why
    raise app.UsageError(str(error)) from error


if __name__ == "__main__":
  define_flags()
  app.run(main)
