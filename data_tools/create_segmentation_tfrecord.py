r"""Images + semantic label maps -> sharded segmentation TFRecords.

Pascal VOC layout (JPEG images + PNG label maps, paired by file stem):
  python -m data_tools.create_segmentation_tfrecord --image_dir=VOC2012/JPEGImages \
      --mask_dir=VOC2012/SegmentationClass --output_file_prefix=data/voc_seg/train \
      --num_shards=8 --num_classes=21 --split_file=VOC2012/ImageSets/Segmentation/train.txt
COCO instances -> semantic maps (instead of --mask_dir):
  python -m data_tools.create_segmentation_tfrecord --image_dir=val2017 \
      --object_annotations_file=instances_val2017.json --output_file_prefix=data/coco_seg/val

Label maps: a palette ('P') PNG (the palette index is the class, as VOC's SegmentationClass)
or a single-channel 8-bit PNG of class ids; 255 = ignore. With --num_classes every other value
must be < K. COCO: label = category id (0 = background, so K = largest id + 1, 91 for COCO),
crowd regions = 255, polygons and RLE both; where instances overlap, the later annotation in
the file wins (painted last). A label_map.json ({id: name}, 0 = background) is written beside
COCO shards.
Every pair is checked before anything is written; each problem is reported with its file:
a missing mask, mask size != image size, a label >= num_classes that is not 255, an RGB colour
mask (not a palette PNG), a mask of the wrong bit depth, a mask that is not a PNG, an
unreadable image. Records go to shard i mod N in sorted-stem order.
"""
import io
import json
import os
import sys

from absl import app, flags
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import tensorflow as tf

from data_tools.create_classification_tfrecord import Record, encode_record, shard_paths
from detlab.data import label_map as label_maps
from detlab.data.segmentation_example import (IGNORE_LABEL, build_segmentation_example,
                                              semantic_map)
from detlab.progress import Progress

FLAGS = flags.FLAGS
if __name__ == "__main__":
  flags.DEFINE_string("image_dir", None, "Folder of images (JPEG/PNG).")
  flags.DEFINE_string("mask_dir", None, "Folder of PNG label maps named like the images.")
  flags.DEFINE_string("object_annotations_file", None, "COCO instances JSON (no --mask_dir).")
  flags.DEFINE_string("output_file_prefix", None, "Output path prefix, e.g. data/x/train.")
  flags.DEFINE_integer("num_shards", 8, "Number of TFRecord files.")
  flags.DEFINE_integer("num_classes", None, "K including background: labels must be < K.")
  flags.DEFINE_string("split_file", None, "A list of file stems to convert (one per line).")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ConversionError(ValueError):
  """Problems found in the inputs; nothing was written."""


def read_label_map_png(path: str) -> np.ndarray:
  """[H, W] uint8 class ids of a palette or single-channel 8-bit PNG; ValueError naming the
  file and the fix otherwise."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    mask = Image.open(io.BytesIO(data))
    mask.load()
  except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise ValueError(f"{path}: unreadable mask ({type(error).__name__}: {error})") from error
  if mask.format != "PNG":
    raise ValueError(f"{path}: a {mask.format} mask; label maps must be PNG (lossless).")
  if mask.mode in ("RGB", "RGBA"):
    raise ValueError(f"{path}: an RGB colour mask, not a palette PNG; save it as a palette "
                     "('P') PNG or a single-channel PNG of class ids (255 = ignore).")
  if mask.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    raise ValueError(f"{path}: wrong bit depth (mode {mask.mode}, over 8 bits per pixel); "
                     "label maps must be 8-bit class ids.")
  if mask.mode not in ("P", "L"):
    raise ValueError(f"{path}: wrong bit depth / mode {mask.mode}; label maps must be an "
                     "8-bit palette ('P') or single-channel ('L') PNG.")
  return np.asarray(mask, np.uint8)  # for 'P' these are the palette indices


def check_labels(path: str, labels: np.ndarray, image_hw, num_classes: int | None) -> list:
  errors = []
  if labels.shape != tuple(image_hw):
    errors.append(f"{path}: mask size {labels.shape[1]}x{labels.shape[0]} (WxH) differs from "
                  f"its image's {image_hw[1]}x{image_hw[0]}.")
  if num_classes is not None:
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
      errors.append(f"{path}: label value(s) {bad.tolist()} >= num_classes={num_classes} and "
                    f"not {IGNORE_LABEL} (ignore); raise --num_classes or fix the mask.")
  return errors


def list_images(image_dir: str, split_file: str | None) -> tuple[dict, list]:
  """({stem: image path}, errors) of the images to convert, sorted by stem."""
  if not tf.io.gfile.isdir(image_dir):
    raise ConversionError(f"--image_dir {image_dir} is not a folder.")
  images = {}
  for name in sorted(tf.io.gfile.listdir(image_dir)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
      images[stem] = os.path.join(image_dir, name)
  errors = []
  if split_file:
    with tf.io.gfile.GFile(split_file) as f:
      wanted = [line.strip() for line in f if line.strip()]
    errors = [f"{split_file}: '{s}' has no image in {image_dir}" for s in wanted
              if s not in images]
    images = {s: images[s] for s in wanted if s in images}
  if not images and not errors:
    raise ConversionError(f"--image_dir {image_dir} holds no .jpg/.jpeg/.png images.")
  return dict(sorted(images.items())), errors


def coco_label_maps(annotations_file: str) -> tuple[dict, dict]:
  """({file stem: (image entry, [annotations in file order])}, {id: name})."""
  with tf.io.gfile.GFile(annotations_file) as f:
    coco = json.load(f)
  by_id = {im["id"]: (im, []) for im in coco["images"]}
  for ann in coco.get("annotations", []):
    if ann["image_id"] in by_id:
      by_id[ann["image_id"]][1].append(ann)
  names = {int(c["id"]): c["name"] for c in coco.get("categories", [])}
  return {os.path.splitext(im["file_name"])[0]: (im, anns) for im, anns in by_id.values()}, names


def coco_semantic_map(image: dict, annotations: list) -> np.ndarray:
  """Polygons / RLE of one image -> class map (later annotations win, crowd = 255)."""
  h, w = int(image["height"]), int(image["width"])
  masks = []
  for ann in annotations:
    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons
      rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):  # uncompressed RLE
      rle = mask_util.frPyObjects(seg, h, w)
    else:
      rle = seg
    masks.append(mask_util.decode(rle))
  return semantic_map(masks, [a["category_id"] for a in annotations], h, w,
                      crowd=[bool(a.get("iscrowd", 0)) for a in annotations])


def convert(image_dir: str, output_file_prefix: str, num_shards: int = 8,
            mask_dir: str | None = None, object_annotations_file: str | None = None,
            num_classes: int | None = None, split_file: str | None = None,
            stream=sys.stderr) -> dict:
  """Checks every pair, then writes the shards. Returns a summary; raises ConversionError
  listing every problem (nothing written)."""
  if (mask_dir is None) == (object_annotations_file is None):
    raise ConversionError("give exactly one of --mask_dir and --object_annotations_file.")
  if num_shards < 1:
    raise ConversionError(f"--num_shards must be >= 1, got {num_shards}.")
  images, errors = list_images(image_dir, split_file)
  coco, names = (coco_label_maps(object_annotations_file) if object_annotations_file
                 else (None, None))
  encoded = []
  progress = Progress(len(images), unit="images", stream=stream)
  for i, (stem, path) in enumerate(images.items()):
    progress.update(i + 1)
    try:
      data, image_format, height, width, _ = encode_record(Record(path, 0, ""))
    except (ValueError, tf.errors.OpError) as error:
      errors.append(str(error))
      continue
    if coco is None:
      mask_path = os.path.join(mask_dir, stem + ".png")
      if not tf.io.gfile.exists(mask_path):
        errors.append(f"{path}: missing mask {mask_path}")
        continue
      try:
        labels = read_label_map_png(mask_path)
      except ValueError as error:
        errors.append(str(error))
        continue
    else:
      mask_path = object_annotations_file
      if stem not in coco:
        errors.append(f"{path}: no image entry in {object_annotations_file}")
        continue
      labels = coco_semantic_map(*coco[stem])
    errors += check_labels(mask_path if coco is None else f"{mask_path} ({stem})", labels,
                           (height, width), num_classes)
    encoded.append((stem, data, image_format, height, width, labels))
  if errors:
    raise ConversionError(f"{len(errors)} problem(s); nothing written:\n  " +
                          "\n  ".join(errors))
  num_shards = min(num_shards, len(encoded))
  paths = shard_paths(output_file_prefix, num_shards)
  tf.io.gfile.makedirs(os.path.dirname(output_file_prefix) or ".")
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i, (stem, data, image_format, height, width, labels) in enumerate(encoded):
    writers[i % num_shards].write(build_segmentation_example(
        encoded_image=data, image_format=image_format, source_id=stem, height=height,
        width=width, label_map=labels, filename=os.path.basename(images[stem])
    ).SerializeToString())
  for writer in writers:
    writer.close()
  if names is not None:
    label_maps.write_label_map(
        os.path.join(os.path.dirname(output_file_prefix), label_maps.LABEL_MAP_NAME),
        {0: "background", **names})
  return {"images": len(encoded), "shards": paths}


def main(argv):
  del argv
  try:
    summary = convert(FLAGS.image_dir, FLAGS.output_file_prefix, FLAGS.num_shards,
                      FLAGS.mask_dir, FLAGS.object_annotations_file, FLAGS.num_classes,
                      FLAGS.split_file)
  except ConversionError as error:
    print(f"create_segmentation_tfrecord: {error}", file=sys.stderr)
    sys.exit(1)
  print(f"Wrote {summary['images']} images to {len(summary['shards'])} shard(s): "
        f"{FLAGS.output_file_prefix}-*.tfrecord")


if __name__ == "__main__":
  flags.mark_flags_as_required(["image_dir", "output_file_prefix"])
  app.run(main)
