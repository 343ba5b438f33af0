r"""COCO instances JSON + image folder -> sharded TFRecords (TF OD-API keys), validated first.

  python -m data_tools.create_coco_tfrecord --image_dir=coco/val2017 \
      --object_annotations_file=coco/annotations/instances_val2017.json \
      --output_file_prefix=data/coco/val --num_shards=8 [--include_masks] [--repair]

Writes PREFIX-00000-of-0000N.tfrecord ... and label_map.json ({"1": "person", ...}) beside
them. Each record: image/encoded (JPEG), source_id (the numeric COCO image id), height,
width, object/bbox/* (normalized), class/label (the COCO category id, not remapped),
class/text, is_crowd, area and, with --include_masks, object/mask (PNG, 0/1). Images with no
annotations are kept (zero objects: valid negatives).

Images: RGB JPEGs without EXIF rotation are stored byte for byte; anything else (PNG,
grayscale, CMYK, RGBA, EXIF-rotated) is decoded, turned upright (EXIF orientation applied with
PIL.ImageOps.exif_transpose, unless --ignore_exif_orientation) and re-encoded as RGB JPEG
(quality 95). Boxes and masks are taken to be in the upright frame, the frame COCO annotation
tools show; the validator checks the JSON's height/width against that frame.

The validator (data_tools.validate_dataset) runs first; when errors that would corrupt
training remain the tool prints the table and exits 1 without writing anything. Repairs
happen only when asked (--repair or the single switches) and are counted in the summary; the
repaired JSON is then written too (for evaluation against the same annotations).

Unlike TF Model Garden's create_coco_tf_record (whose tfrecord_lib silently skips boxes that
leave the image and writes every record from the main process) this tool reports and repairs
on request, shows progress and writes one shard per worker thread, so no worker process has
to import TensorFlow; the record layout is the same (detlab.data.tf_example).
"""
import collections
import concurrent.futures
import json
import os
import sys
import threading

from absl import app, flags
import numpy as np
from pycocotools import mask as mask_util
import tensorflow as tf

from data_tools import validate_dataset
from detlab.data import dataset_checks, tf_example
from detlab.data.coco_fields import crowd_flag
from detlab.data.dataset_checks import Repairs
from detlab.io import write_text
from detlab.data import label_map as label_maps
from detlab.progress import Progress

FLAGS = flags.FLAGS


def define_flags() -> None:
  validate_dataset.define_input_flags()
  validate_dataset.define_check_flags()
  flags.adopt_module_key_flags(validate_dataset)
  flags.DEFINE_string("output_file_prefix", None, "Output path prefix, e.g. data/coco/train.")
  flags.DEFINE_integer("num_shards", 8, "Number of TFRecord files.")
  flags.DEFINE_bool("include_masks", False, "Store instance masks (PNG) from polygons/RLE.")
  flags.mark_flags_as_required(["image_dir", "object_annotations_file", "output_file_prefix"])


def coco_boxes_to_yxyx(bboxes) -> np.ndarray:
  """COCO [x, y, w, h] pixels [M, 4] -> [y1, x1, y2, x2] pixels float32 [M, 4]."""
  b = np.asarray(bboxes, np.float32).reshape(-1, 4)
  return np.stack([b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], -1)


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
  """COCO polygons / RLE (compressed or not) -> uint8 [height, width] 0/1 mask."""
  if isinstance(segmentation, list):
    rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation["counts"], list):
    rle = mask_util.frPyObjects(segmentation, height, width)
  else:
    counts = segmentation["counts"]
    rle = {"size": list(segmentation["size"]),
           "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
  return mask_util.decode(rle).astype(np.uint8)


def shard_paths(prefix: str, num_shards: int) -> list[str]:
  return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def image_bytes_for_record(data: bytes, decoded: dataset_checks.DecodedImage
                           ) -> tuple[bytes, str | None]:
  """(JPEG bytes to store, why it was re-encoded or None when the file is kept as is)."""
  if decoded.format == "JPEG" and decoded.mode == "RGB" and not decoded.exif_transposed:
    return data, None
  reason = "EXIF orientation" if decoded.exif_transposed else f"{decoded.format} {decoded.mode}"
  return tf_example.encode_jpeg(np.asarray(decoded.image), quality=95), reason


def build_coco_example(entry: dict, annotations: list[dict], image_dir: str,
                       categories: dict[int, str], include_masks: bool, apply_exif: bool,
                       with_difficult: bool, stats: collections.Counter) -> tf.train.Example:
  """One images[] entry and its annotations -> an Example; counts what it did in `stats`."""
  path = dataset_checks.image_path(image_dir, str(entry["file_name"]))
  data = dataset_checks.read_bytes(path)
  decoded = dataset_checks.decode_image(data, path, apply_exif)
  encoded, reason = image_bytes_for_record(data, decoded)
  if reason:
    stats[f"re-encoded as RGB JPEG ({reason})"] += 1
  width, height = decoded.image.size
  masks = None
  if include_masks:
    masks = []
    for ann in annotations:
      if "segmentation" in ann:
        masks.append(segmentation_to_mask(ann["segmentation"], height, width))
      else:  # no outline given: the box is the best mask there is, and it is counted
        stats["masks filled from the box (no segmentation)"] += 1
        mask = np.zeros([height, width], np.uint8)
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        mask[max(y, 0):y + h, max(x, 0):x + w] = 1
        masks.append(mask)
  stats["images"] += 1
  stats["objects"] += len(annotations)
  crowd = [crowd_flag(a.get("iscrowd", 0)) for a in annotations]
  if None in crowd:
    bad = annotations[crowd.index(None)]
    raise ValueError(f"annotation {bad.get('id')!r}: iscrowd {bad.get('iscrowd')!r} is not 0 "
                     "or 1 (validate the JSON first: data_tools.validate_dataset)")
  stats["crowd objects"] += sum(crowd)
  stats["images without annotations"] += not annotations
  bboxes = [a["bbox"] for a in annotations]
  return tf_example.build_example(
      encoded_image=encoded, image_format="jpeg", source_id=str(entry["id"]),
      height=height, width=width, boxes_yxyx=coco_boxes_to_yxyx(bboxes),
      category_ids=[int(a["category_id"]) for a in annotations],
      category_names=[categories[a["category_id"]] for a in annotations],
      is_crowd=crowd,
      areas=[float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in annotations],
      masks=masks, filename=str(entry["file_name"]),
      difficult=[int(a.get("difficult", 0)) for a in annotations] if with_difficult else None)


def write_shards(dataset: dict, image_dir: str, prefix: str, num_shards: int,
                 include_masks: bool = False, apply_exif: bool = True, workers: int = 0,
                 with_difficult: bool = False) -> collections.Counter:
  """Writes dataset's images round-robin into num_shards files, one thread per shard."""
  categories = {c["id"]: str(c["name"]) for c in dataset["categories"]}
  by_image = collections.defaultdict(list)
  for ann in dataset["annotations"]:
    by_image[ann["image_id"]].append(ann)
  paths = shard_paths(prefix, num_shards)
  progress = Progress(len(dataset["images"]), unit="images")
  lock, stats, done = threading.Lock(), collections.Counter(), [0]

  def write_one(shard: int) -> None:
    shard_stats = collections.Counter()
    with tf.io.TFRecordWriter(paths[shard]) as writer:
      for entry in dataset["images"][shard::num_shards]:
        example = build_coco_example(entry, by_image.get(entry["id"], []), image_dir,
                                     categories, include_masks, apply_exif, with_difficult,
                                     shard_stats)
        writer.write(example.SerializeToString())
        with lock:
          done[0] += 1
          progress.update(done[0], prefix="[convert] ")
    with lock:
      stats.update(shard_stats)

  workers = workers or min(num_shards, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for future in [pool.submit(write_one, shard) for shard in range(num_shards)]:
      future.result()  # re-raises a worker's error here
  return stats


def write_label_map(categories: list[dict], directory: str) -> str:
  """label_map.json ({"id": "name"}, make_shapes_dataset's format) in `directory`."""
  path = os.path.join(directory, label_maps.LABEL_MAP_NAME)
  label_maps.write_label_map(path, {int(c["id"]): c["name"] for c in categories})
  return path


def convert_dataset(coco: dict, image_dir: str, output_file_prefix: str, num_shards: int = 8,
                    include_masks: bool = False, repairs: Repairs | None = None,
                    max_instances: int = 100, apply_exif: bool = True,
                    box_tolerance: float = 1.0, workers: int = 0,
                    output_annotations_file: str | None = None, with_difficult: bool = False,
                    stream=sys.stdout, source: str = "") -> int:
  """Validates, then writes the shards and label map. Returns the exit status (0 written,
  1 refused: errors left, nothing written). `source` names the JSON in the messages."""
  if num_shards < 1:
    raise ValueError(f"--num_shards must be >= 1, got {num_shards}")
  report = validate_dataset.check_dataset(
      coco, image_dir, max_instances, repairs, check_masks=include_masks,
      apply_exif=apply_exif, box_tolerance=box_tolerance, workers=workers, stream=stream,
      source=source)
  if not report.ok:
    print(f"Refusing to write {output_file_prefix}-*.tfrecord: nothing written.", file=stream)
    return 1
  directory = os.path.dirname(output_file_prefix)
  if directory:
    tf.io.gfile.makedirs(directory)
  dataset = report.dataset
  stats = write_shards(dataset, image_dir, output_file_prefix, num_shards, include_masks,
                       apply_exif, workers, with_difficult)
  label_map = write_label_map(dataset["categories"], directory)
  if report.repairs and not output_annotations_file:
    base = os.path.basename(output_file_prefix)
    output_annotations_file = os.path.join(directory, f"annotations_{base}.json")
  if output_annotations_file:
    write_text(output_annotations_file, json.dumps(dataset))  # not strict(): a large copy
  lines = [f"Wrote {stats['images']} images ({stats['images without annotations']} without "
           f"annotations) and {stats['objects']} objects ({stats['crowd objects']} crowd"
           f"{', with masks' if include_masks else ''}) to {num_shards} shards "
           f"{output_file_prefix}-?????-of-{num_shards:05d}.tfrecord; label map {label_map}."]
  lines += [f"  {v} {k}" for k, v in sorted(stats.items()) if k.startswith(("re-enc", "masks"))]
  if report.repairs:
    lines.append("  repairs: " + ", ".join(f"{v} {k}" for k, v in sorted(report.repairs.items())))
  if output_annotations_file:
    lines.append(f"  checked annotations (evaluate against these): {output_annotations_file}")
  print("\n".join(lines), file=stream)
  return 0


def convert(image_dir: str, object_annotations_file: str, output_file_prefix: str,
            stream=sys.stdout, **kwargs) -> int:
  """The tool without flags: loads the JSON, then convert_dataset (exit status 2: unreadable)."""
  try:
    coco = validate_dataset.load_json(object_annotations_file)
    return convert_dataset(coco, image_dir, output_file_prefix, stream=stream,
                           source=object_annotations_file, **kwargs)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=stream)
    return 2


def main(argv) -> None:
  del argv
  sys.exit(convert(
      FLAGS.image_dir, FLAGS.object_annotations_file, FLAGS.output_file_prefix,
      num_shards=FLAGS.num_shards, include_masks=FLAGS.include_masks,
      repairs=validate_dataset.repairs_from_flags(), max_instances=FLAGS.max_instances,
      apply_exif=not FLAGS.ignore_exif_orientation, box_tolerance=FLAGS.box_tolerance,
      workers=FLAGS.num_workers, output_annotations_file=FLAGS.output_annotations_file))


if __name__ == "__main__":
  define_flags()
  app.run(main)
