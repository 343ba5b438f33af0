r"""Writes the built-in synthetic shapes data set as TFRecords (TF OD-API layout).

  python -m data_tools.make_shapes_dataset --output_dir=data/shapes

Produces train-?????-of-?????.tfrecord, val-?????-of-?????.tfrecord, label_map.json
({category id: name}) and val_annotations.json (COCO instances format, RLE masks).
Deterministic: the same flags give byte-identical records.
With --semantic_maps every record also holds a semantic label map (background 0, shape
classes 1..4 = the category ids, from the visible-pixel instance masks) under
detlab.data.segmentation_example's key, so the same files serve segmentation too.
"""
import multiprocessing
import os

from absl import app, flags, logging
import numpy as np
from pycocotools import mask as mask_util
import tensorflow as tf

from detlab.data import builtin_shapes, tf_example
from detlab.data import label_map as label_maps
from detlab.data.segmentation_example import mask_features, semantic_map
from detlab.io import write_json
from detlab.progress import Progress

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "data/shapes", "Where to write the data set.")
flags.DEFINE_integer("num_train", 3000, "Training images.")
flags.DEFINE_integer("num_val", 300, "Validation images.")
flags.DEFINE_integer("num_shards", 4, "Shards per split.")
flags.DEFINE_integer("seed", 0, "Data set seed; validation uses seed + 1.")
flags.DEFINE_integer("workers", 0, "Worker processes (0: one per CPU core).")
flags.DEFINE_bool("semantic_maps", False, "Also store a semantic label map per image.")


def shard_path(output_dir: str, split: str, shard: int, num_shards: int) -> str:
  return os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def _write_shard(args) -> list[dict]:
  """Writes one shard; returns COCO rows (image + annotations) for its images."""
  path, seed, indices, id_offset, semantic = args
  images, annotations = [], []
  with tf.io.TFRecordWriter(path) as writer:
    for index in indices:
      scene = builtin_shapes.render_scene(seed, index)
      height, width = scene["image"].shape[:2]
      image_id = id_offset + index
      example = tf_example.build_example(
          encoded_image=tf_example.encode_jpeg(scene["image"]), image_format="jpeg",
          source_id=str(image_id), height=height, width=width, boxes_yxyx=scene["boxes"],
          category_ids=scene["category_ids"],
          category_names=[builtin_shapes.CATEGORIES[c] for c in scene["category_ids"]],
          areas=scene["areas"], masks=scene["masks"], filename=f"{image_id}.jpg")
      if semantic:  # visible-pixel masks do not overlap: one class per pixel
        for key, value in mask_features(semantic_map(
            scene["masks"], scene["category_ids"], height, width)).items():
          example.features.feature[key].CopyFrom(value)
      writer.write(example.SerializeToString())
      images.append({"id": image_id, "height": int(height), "width": int(width),
                     "file_name": f"{image_id}.jpg"})
      for box, category, mask, area in zip(scene["boxes"], scene["category_ids"],
                                           scene["masks"], scene["areas"]):
        rle = mask_util.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        y1, x1, y2, x2 = (float(v) for v in box)
        annotations.append({"image_id": image_id, "category_id": int(category),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area),
                            "iscrowd": 0, "segmentation": rle})
  return images, annotations


def write_split(output_dir: str, split: str, num_images: int, num_shards: int, seed: int,
                id_offset: int, workers: int, semantic_maps: bool = False) -> dict:
  """Writes one split's shards in parallel; returns its COCO annotation dict."""
  num_shards = max(1, min(num_shards, num_images))
  jobs = [(shard_path(output_dir, split, s, num_shards), seed,
           range(s, num_images, num_shards), id_offset, semantic_maps)
          for s in range(num_shards)]
  progress = Progress(num_shards, unit="shards")
  images, annotations = [], []
  # One worker: in this process (no spawn start-up; and ram:// files are per process).
  pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
  try:
    results = pool.imap_unordered(_write_shard, jobs) if pool else map(_write_shard, jobs)
    for done, (shard_images, shard_annotations) in enumerate(results, start=1):
      images += shard_images
      annotations += shard_annotations
      progress.update(done, prefix=f"[{split}] ")
  finally:
    if pool:
      pool.close()
      pool.join()
  images.sort(key=lambda r: r["id"])
  annotations.sort(key=lambda r: r["image_id"])
  for i, row in enumerate(annotations, start=1):
    row["id"] = i
  categories = [{"id": i, "name": n} for i, n in builtin_shapes.CATEGORIES.items()]
  return {"images": images, "annotations": annotations, "categories": categories}


def make_dataset(output_dir: str, num_train: int, num_val: int, num_shards: int = 4,
                 seed: int = 0, workers: int = 0, semantic_maps: bool = False) -> None:
  tf.io.gfile.makedirs(output_dir)  # every path through tf.io.gfile: local, gs://, ram://
  workers = workers or os.cpu_count() or 1
  splits = (("train", num_train, seed, 0), ("val", num_val, seed + 1, 1_000_000))
  for split, count, split_seed, offset in splits:
    coco = write_split(output_dir, split, count, num_shards, split_seed, offset, workers,
                       semantic_maps)
    if split == "val":
      write_json(os.path.join(output_dir, "val_annotations.json"), coco, indent=None)
    logging.info("%s: %d images, %d objects", split, len(coco["images"]),
                 len(coco["annotations"]))
  label_maps.write_label_map(os.path.join(output_dir, label_maps.LABEL_MAP_NAME),
                             builtin_shapes.CATEGORIES)
  print(f"Wrote the built-in shapes data set to {output_dir}: {num_train} train and "
        f"{num_val} val images, {len(builtin_shapes.CATEGORIES)} categories.")


def main(argv):
  del argv
  make_dataset(FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.num_shards,
               FLAGS.seed, FLAGS.workers, FLAGS.semantic_maps)


if __name__ == "__main__":
  app.run(main)
