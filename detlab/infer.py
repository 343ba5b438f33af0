r"""Detect objects in image files with any exported model or a model_dir.

  python -m detlab.infer --model=/tmp/d0_export/model_int8.tflite --images='/data/*.jpg' \
      --output_dir=/tmp/detections [--score_threshold=0.3] [--label_map_file=label_map.json]

--model is anything detlab.export.runners.load_runner accepts: a training model_dir, an
export OUT directory (its saved_model/), OUT/saved_model, a .tflite file, an OpenVINO
model.xml or an .onnx file. Writes to --output_dir:
  detections.json  COCO results format: [{"image_id", "category_id", "bbox": [x, y, w, h]
                   in original pixels, "score"}], the detections with score >= threshold;
                   an instance-segmentation model's rows add "segmentation": the mask's
                   COCO compressed RLE {"size": [h, w], "counts": str} in original pixels
  images.json      {"images": [{"id", "file_name", "height", "width", "output_file"}],
                   "skipped": [{"file_name", "error"}]}: which file each image_id is
  <stem>.png       each image at its own size with its boxes, class names and scores (and
                   the masks, filled in their class colour, for a mask model)
image_id is the file's stem when every stem is a distinct integer (COCO's 000000139.jpg ->
139), else the file's 1-based position in the sorted file list. Images are read upright
(EXIF orientation applied) as 8-bit RGB: grey and palette expanded, alpha dropped, 16-bit
samples reduced to their high byte (as PIL reads 16-bit RGB). A file that cannot be decoded
is reported by name and skipped; the others go on. Paths may be gs:// (tf.io.gfile).
"""
import dataclasses
import os
import sys

from absl import app, flags, logging
import numpy as np
from PIL import Image
import tensorflow as tf

from detlab.data import image_files
from detlab.evaluation.coco_evaluator import encode_mask
from detlab.data.label_map import read_label_map
from detlab.io import write_json, write_png

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run: tests import this module beside tools with an --output_dir."""
  flags.DEFINE_string("model", None, "A model_dir, export directory, SavedModel, .tflite file, "
                      "OpenVINO model.xml or .onnx file.")
  flags.DEFINE_string("images", None, "Glob of image files (comma-separated globs allowed).")
  flags.DEFINE_string("output_dir", None, "Where detections.json, images.json and the PNGs go.")
  flags.DEFINE_float("score_threshold", 0.3, "Detections below this score are not written.")
  flags.DEFINE_string("label_map_file", None, "JSON {category id: name} for the drawn labels "
                      "(default: the model's own names, else the ids).")
  flags.mark_flags_as_required(["model", "images", "output_dir"])


class InferError(ValueError):
  """A user error (no images matched, unreadable label map); the message names the fix."""


def list_images(pattern: str) -> list[str]:
  files = []
  for part in pattern.split(","):
    if part.strip():
      files += tf.io.gfile.glob(part.strip())
  files = sorted(set(f for f in files if not tf.io.gfile.isdir(f)))
  if not files:
    raise InferError(f"--images={pattern!r} matches no file; give a glob of image files, "
                     "e.g. --images='/data/images/*.jpg' (quoted, so the shell leaves it).")
  return files


def image_ids(files: list[str]) -> list[int]:
  """The numeric stems if all are distinct integers, else positions 1..N (module doc)."""
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
    return [int(s) for s in stems]
  return list(range(1, len(files) + 1))


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
  """A PIL image of any mode -> uint8 [H, W, 3] RGB."""
  if image.mode.startswith("I"):  # 16-bit (I;16*) or 32-bit integer grey: convert() clips
    grey = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"))  # L, P, LA, RGBA (alpha dropped), CMYK, 1, ...


def read_image(path: str) -> np.ndarray:
  """The file's pixels, upright, as uint8 RGB; raises ValueError naming the file if it
  cannot be read or decoded (data/image_files.py, the converters' reader)."""
  try:
    _, upright, _ = image_files.open_upright(image_files.read_bytes(path), path)
  except image_files.ImageError as error:
    raise ValueError(str(error)) from error
  return to_rgb_uint8(upright)


def load_label_map(path: str) -> dict[int, str]:
  """--label_map_file's {category id: name}; InferError naming the fix when it is unusable."""
  try:
    return read_label_map(path, flag="--label_map_file")
  except (FileNotFoundError, ValueError) as error:
    raise InferError(f"{error} Or leave --label_map_file out.") from error


def coco_results(image_id: int, detections: dict, index: int, score_threshold: float) -> list:
  """Row `index` of a runner's output -> COCO result dicts (bbox [x, y, w, h]; with the
  runner's "masks" (each image's [D, H, W] 0/1), "segmentation" RLE too)."""
  masks = detections["masks"][index] if "masks" in detections else None
  rows = []
  for i in range(int(detections["num_detections"][index])):
    score = float(detections["scores"][index, i])
    if score < score_threshold:
      continue
    y1, x1, y2, x2 = (float(v) for v in detections["boxes"][index, i])
    rows.append({"image_id": image_id, "category_id": int(detections["classes"][index, i]),
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                 "score": round(score, 5)})
    if masks is not None:
      rows[-1]["segmentation"] = encode_mask(masks[i])
  return rows


def _png_name(path: str, used: set) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  name, n = f"{stem}.png", 1
  while name in used:  # two globbed directories may hold the same stem
    n += 1
    name = f"{stem}_{n}.png"
  used.add(name)
  return name


@dataclasses.dataclass
class InferResult:
  detections: list
  images: list
  skipped: list


def run_inference(model: str, images: str, output_dir: str, score_threshold: float = 0.3,
                  label_map_file: str | None = None, runner=None) -> InferResult:
  """What the CLI does; `runner` (a load_runner result) may be passed to skip loading."""
  from detlab.evaluation.visualize import draw_panel, mask_overlay  # pylint: disable=import-outside-toplevel
  from detlab.export.runners import load_runner  # pylint: disable=import-outside-toplevel
  from detlab.progress import Progress  # pylint: disable=import-outside-toplevel
  files = list_images(images)
  names = load_label_map(label_map_file) if label_map_file else None
  runner = runner or load_runner(model)
  names = names or runner.category_names or {}
  tf.io.gfile.makedirs(output_dir)
  result, used = InferResult([], [], []), set()
  progress = Progress(len(files), "img")
  for done, (path, image_id) in enumerate(zip(files, image_ids(files)), 1):
    try:
      image = read_image(path)
    except ValueError as error:
      logging.warning("Skipping %s: %s", path, error)
      print(f"detlab.infer: skipped {path}: {error}", file=sys.stderr, flush=True)
      result.skipped.append({"file_name": path, "error": str(error)})
      progress.update(done, prefix="infer ")
      continue
    found = runner(image)
    result.detections += coco_results(image_id, found, 0, score_threshold)
    count = int(found["num_detections"][0])
    picture = image
    if "masks" in found:  # filled under the boxes, the highest score drawn last (on top)
      shown = np.flatnonzero(found["scores"][0, :count] >= score_threshold)[::-1]
      picture = mask_overlay(image, [], found["masks"][0][shown],
                             found["classes"][0, shown] - 1)
    # At the image's own size (min_size=0: not upscaled), so its pixels are detections.json's.
    panel = draw_panel(picture, [], found["boxes"][0, :count], found["scores"][0, :count],
                       found["classes"][0, :count] - 1, names, score_threshold,  # class index
                       min_size=0)
    png = _png_name(path, used)
    write_png(os.path.join(output_dir, png), panel)
    result.images.append({"id": image_id, "file_name": path, "height": image.shape[0],
                          "width": image.shape[1], "output_file": png})
    progress.update(done, prefix="infer ")
  write_json(os.path.join(output_dir, "detections.json"), result.detections, indent=None)
  write_json(os.path.join(output_dir, "images.json"),
             {"images": result.images, "skipped": result.skipped})
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  from detlab import api  # pylint: disable=import-outside-toplevel
  from detlab.export import exporter, runners  # pylint: disable=import-outside-toplevel
  try:
    result = run_inference(FLAGS.model, FLAGS.images, FLAGS.output_dir, FLAGS.score_threshold,
                           FLAGS.label_map_file)
  except (InferError, runners.RunnerError, exporter.ExportError,
          api.CheckpointLoadError) as error:
    print(f"detlab.infer: error: {error}", file=sys.stderr)  # errors that name their fix
    sys.exit(1)
  print(f"{len(result.detections)} detections on {len(result.images)} images "
        f"({len(result.skipped)} skipped) -> {os.path.join(FLAGS.output_dir, 'detections.json')}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
