r"""A folder of class sub-folders -> sharded ImageNet-layout TFRecords + label_map.json.

  python -m data_tools.create_classification_tfrecord --image_dir=data/pets/train \
      --output_file_prefix=data/pets/records/train --num_shards=8
  python -m data_tools.create_classification_tfrecord --image_dir=data/pets/val \
      --output_file_prefix=data/pets/records/val --num_shards=2 \
      --label_map_file=data/pets/records/label_map.json

DIR holds one sub-folder per class; sorted folder names are labels 0..K-1, written as
label_map.json ({"0": name, ...}) beside the shards. With --label_map_file (the training
set's) the labels come from it, a folder not in it is an error, and no label map is written.

Every file is decoded before anything is written. Unreadable or corrupt images, non-image
files and empty class folders are errors listed by file; nothing is written while any
remain. Grayscale, palette, CMYK, RGBA, 16-bit and EXIF-rotated images are converted to
upright 8-bit RGB (stored as PNG, lossless) and counted in the summary; RGB JPEG and PNG
files are stored byte for byte. Hidden files (.DS_Store, ...) are skipped. Records are
shuffled (fixed seed) so every shard mixes the classes.
"""
import dataclasses
import io
import os
import random
import sys

from absl import app, flags
import numpy as np
from PIL import Image, ImageOps
import tensorflow as tf

from detlab.data.classification_example import build_classification_example
from detlab.data import label_map as label_maps
from detlab.io import png_bytes
from detlab.progress import Progress

FLAGS = flags.FLAGS
if __name__ == "__main__":
  flags.DEFINE_string("image_dir", None, "Folder with one sub-folder of images per class.")
  flags.DEFINE_string("output_file_prefix", None, "Output path prefix, e.g. data/x/train.")
  flags.DEFINE_integer("num_shards", 8, "Number of TFRecord files.")
  flags.DEFINE_string("label_map_file", None, "The training set's label_map.json (for eval).")
  flags.DEFINE_integer("seed", 0, "Seed of the record shuffle.")
  flags.mark_flags_as_required(["image_dir", "output_file_prefix"])


class ConversionError(ValueError):
  """Problems found in the image folder; nothing was written."""


@dataclasses.dataclass
class Record:
  path: str
  label: int
  class_name: str


def shard_paths(prefix: str, num_shards: int) -> list[str]:
  return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def _to_rgb8(image: Image.Image) -> tuple[Image.Image, str | None]:
  """Upright 8-bit RGB and what was converted (None when the pixels are already that)."""
  notes = []
  orientation = image.getexif().get(0x0112, 1)
  if orientation in range(2, 9):
    image = ImageOps.exif_transpose(image)
    notes.append("EXIF rotation")
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # PIL's convert('RGB') clips 16-bit values at 255 (a white image): scale to 8 bit first.
    pixels = np.asarray(image, np.float64)
    top = 65535.0 if image.mode != "I" or pixels.max() > 255 else 255.0
    image = Image.fromarray(np.round(pixels / top * 255).astype(np.uint8), "L")
    notes.append("16-bit")
  if image.mode != "RGB":
    notes.append({"L": "grayscale", "LA": "grayscale+alpha", "P": "palette",
                  "PA": "palette+alpha", "CMYK": "CMYK", "RGBA": "RGBA (alpha dropped)",
                  "1": "1-bit"}.get(image.mode, image.mode))
    image = image.convert("RGB")
  return image, (", ".join(notes) if notes else None)


def encode_record(record: Record) -> tuple[bytes, str, int, int, str | None]:
  """(encoded, format, height, width, conversion note); raises ValueError naming the file."""
  with tf.io.gfile.GFile(record.path, "rb") as f:
    data = f.read()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel: a truncated file fails here, not in training
  except Image.UnidentifiedImageError as error:
    raise ValueError(f"{record.path}: not an image file (PIL cannot identify it)") from error
  except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise ValueError(f"{record.path}: corrupt image ({type(error).__name__}: {error})") \
        from error
  file_format = str(image.format)
  rgb, note = _to_rgb8(image)
  if note is None and file_format in ("JPEG", "PNG"):
    return data, file_format.lower(), rgb.height, rgb.width, None
  if note is None:
    note = f"{file_format} re-encoded"
  return png_bytes(rgb), "png", rgb.height, rgb.width, note


def list_records(image_dir: str, class_names: list[str] | None) -> tuple[list, list, list]:
  """(records, class names by label, errors) for the folder layout."""
  if not tf.io.gfile.isdir(image_dir):
    raise ConversionError(f"--image_dir {image_dir} is not a folder.")
  entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(image_dir))
  folders = [e for e in entries if tf.io.gfile.isdir(os.path.join(image_dir, e))]
  errors = [f"{os.path.join(image_dir, e)}: a file directly in --image_dir (images belong in "
            "one sub-folder per class)" for e in entries
            if e not in folders and not e.startswith(".")]
  if not folders:
    raise ConversionError(f"--image_dir {image_dir} has no class sub-folders; put each class's "
                          "images in DIR/<class name>/.")
  names = list(class_names) if class_names is not None else folders
  unknown = [f for f in folders if f not in names]
  if unknown:
    raise ConversionError(
        f"class folder(s) {unknown} in {image_dir} are not in the label map ({len(names)} "
        f"classes: {names[:10]}{'...' if len(names) > 10 else ''}); evaluate on the training "
        "classes only, or rebuild the training set with these classes.")
  records = []
  for folder in folders:
    files = sorted(f for f in tf.io.gfile.listdir(os.path.join(image_dir, folder))
                   if not f.startswith(".") and not f.endswith("/"))
    if not files:
      errors.append(f"{os.path.join(image_dir, folder)}: empty class folder (no images)")
    records += [Record(os.path.join(image_dir, folder, f), names.index(folder), folder)
                for f in files]
  return records, names, errors


def convert(image_dir: str, output_file_prefix: str, num_shards: int = 8,
            label_map_file: str | None = None, seed: int = 0, stream=sys.stderr) -> dict:
  """Checks every file, then writes the shards (and label map). Returns a summary dict;
  raises ConversionError listing every problem (nothing written)."""
  if num_shards < 1:
    raise ConversionError(f"--num_shards must be >= 1, got {num_shards}.")
  class_names = label_maps.class_names(label_map_file) if label_map_file else None
  records, names, errors = list_records(image_dir, class_names)
  encoded, converted = [], {}
  progress = Progress(len(records), unit="images", stream=stream)
  for i, record in enumerate(records):
    try:
      data, file_format, height, width, note = encode_record(record)
      encoded.append((record, data, file_format, height, width))
      if note:
        converted[note] = converted.get(note, 0) + 1
    except (ValueError, tf.errors.OpError) as error:
      errors.append(str(error))
    progress.update(i + 1, prefix="checking ")
  if errors:
    raise ConversionError(f"{len(errors)} problem(s) in {image_dir}; nothing written. Fix or "
                          "remove these files and run again:\n  " + "\n  ".join(errors))
  if len(encoded) < num_shards:
    raise ConversionError(f"{len(encoded)} images for --num_shards={num_shards}: every shard "
                          "needs at least one image; lower --num_shards.")
  random.Random(seed).shuffle(encoded)
  out_dir = os.path.dirname(output_file_prefix)
  if out_dir:
    tf.io.gfile.makedirs(out_dir)
  paths = shard_paths(output_file_prefix, num_shards)
  for shard, path in enumerate(paths):
    with tf.io.TFRecordWriter(path) as writer:
      for record, data, file_format, height, width in encoded[shard::num_shards]:
        example = build_classification_example(
            data, record.label, record.class_name, height, width, file_format,
            os.path.relpath(record.path, image_dir))
        writer.write(example.SerializeToString())
  label_map = label_map_file
  if label_map is None:
    label_map = os.path.join(out_dir, "label_map.json")
    label_maps.write_class_names(label_map, names)
  summary = {"images": len(encoded), "classes": len(names), "converted": converted,
             "shards": paths, "label_map": label_map}
  notes = ", ".join(f"{n} {k}" for k, n in sorted(converted.items())) or "none"
  print(f"Wrote {len(encoded)} images of {len(names)} classes to {num_shards} shards "
        f"{output_file_prefix}-?????-of-{num_shards:05d}.tfrecord; label map {label_map}. "
        f"Converted to 8-bit RGB: {notes}.", file=stream, flush=True)
  return summary


def main(argv) -> None:
  del argv
  try:
    convert(FLAGS.image_dir, FLAGS.output_file_prefix, FLAGS.num_shards,
            FLAGS.label_map_file, FLAGS.seed)
  except (ConversionError, FileNotFoundError, ValueError) as error:
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
