r"""Small REAL data sets for every task, from data scikit-learn ships (nothing downloaded).

  python -m data_tools.make_digits_sets --output_dir=data/digits

Source: `sklearn.datasets.load_digits` (the UCI "Optical Recognition of Handwritten Digits"
test set: 1,797 real handwritten digits by 43 writers, 8x8 pixels, 0..16 ink, 10 classes) and
the two photographs of `sklearn.datasets.load_sample_images` (china.jpg, flower.jpg, 640x427).
Both are in scikit-learn's wheel (`pip install -e ".[demo]"`). The digits are split 80/20 per
class (seeded): about 1,437 train and 360 val digits; val scenes use val digits only.

Writes, under OUTPUT_DIR (any tf.io.gfile path):
  classification/images/{train,val}/<digit>/<index>.png   ImageFolder layout (grayscale, dark
      ink on white, upscaled to --classification_size), the input of create_classification_tfrecord,
  classification/{train,val}-?????-of-?????.tfrecord, label_map.json   its output (labels 0..9)
  scenes/{train,val}-?????-of-?????.tfrecord   one to --max_digits digits pasted at random
      scales and places (no overlap) onto crops of the two photographs, --scene_size square,
      JPEG; OD-API keys: boxes = each pasted digit's ink extent, category id = digit + 1,
      instance masks = its ink (alpha >= 0.5 after upscaling), and a semantic map (background 0,
      digit d -> d + 1), so the same files serve detection, segmentation and the joint task
  scenes/label_map.json ({1: "0", ..., 10: "9"}), scenes/{train,val}_annotations.json (COCO
      instances, RLE masks)
Deterministic: the same flags give the same bytes (every scene draws from its own seed).
"""
import os

from absl import app, flags
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import tensorflow as tf

from data_tools import create_classification_tfrecord
from detlab.data import label_map as label_maps
from detlab.data import tf_example
from detlab.data.segmentation_example import mask_features, semantic_map
from detlab.io import png_bytes, write_bytes, write_json
from detlab.progress import Progress

FLAGS = flags.FLAGS
if __name__ == "__main__":
  flags.DEFINE_string("output_dir", "data/digits", "Where to write the sets.")
  flags.DEFINE_integer("seed", 0, "Seed of the split, the scenes and the record shuffle.")
  flags.DEFINE_float("val_fraction", 0.2, "Share of each class's digits held out for val.")
  flags.DEFINE_integer("classification_size", 32, "Side of the classification images.")
  flags.DEFINE_integer("num_train_scenes", 1500, "Training scenes.")
  flags.DEFINE_integer("num_val_scenes", 300, "Validation scenes.")
  flags.DEFINE_integer("scene_size", 128, "Side of a scene in pixels.")
  flags.DEFINE_integer("max_digits", 4, "At most this many digits per scene (at least 1).")
  flags.DEFINE_integer("num_shards", 4, "Shards per split.")
  flags.DEFINE_integer("limit_per_class", 0, "Use only this many digits of each class (0: "
                       "all; a quick look or a test).")

CLASS_NAMES = [str(d) for d in range(10)]
INK_THRESHOLD = 0.5  # a pixel is the digit's (mask, box) where its upscaled ink is >= half


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images float32 [1797, 8, 8] ink in 0..1, labels int64 [1797])."""
  from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=import-outside-toplevel
  digits = sklearn_digits()
  return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def load_photos() -> list[np.ndarray]:
  """The photographs scikit-learn ships, uint8 [427, 640, 3] each (china, flower)."""
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  return [np.asarray(image, np.uint8) for image in load_sample_images().images]


def split_indices(labels: np.ndarray, val_fraction: float, seed: int,
                  limit_per_class: int = 0) -> dict[str, np.ndarray]:
  """{"train", "val"}: sorted digit indices, the last `val_fraction` of each class's
  seeded permutation held out (stratified); `limit_per_class` > 0 keeps only the first that
  many of each permutation."""
  rng = np.random.default_rng([seed, 7])
  train, val = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    if limit_per_class > 0:
      members = members[:limit_per_class]
    count = int(round(val_fraction * len(members)))
    val += list(members[len(members) - count:])
    train += list(members[:len(members) - count])
  return {"train": np.sort(np.array(train, np.int64)), "val": np.sort(np.array(val, np.int64))}


def upscale(ink: np.ndarray, size: int) -> np.ndarray:
  """float [8, 8] ink 0..1 -> float32 [size, size] 0..1, bilinear."""
  image = Image.fromarray(np.round(ink * 255).astype(np.uint8), "L")
  return np.asarray(image.resize((size, size), Image.BILINEAR), np.float32) / 255.0


def classification_image(ink: np.ndarray, size: int) -> np.ndarray:
  """A digit as a uint8 [size, size] grayscale picture: dark ink on white paper."""
  return np.round(255.0 * (1.0 - upscale(ink, size))).astype(np.uint8)


def _background(photos, rng, size: int) -> np.ndarray:
  photo = photos[rng.integers(len(photos))]
  height, width = photo.shape[:2]
  side = int(rng.integers(size, min(height, width, 3 * size) + 1))
  top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
  crop = Image.fromarray(photo[top:top + side, left:left + side])
  return np.asarray(crop.resize((size, size), Image.BILINEAR), np.uint8)


def render_scene(digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, photos, seed: int,
                 split_id: int, index: int, size: int = 128, max_digits: int = 4) -> dict:
  """One scene from its own seed: {"image" uint8 [S,S,3], "background" (before pasting),
  "boxes" float32 [M,4] yxyx px (ink extent, end-exclusive), "category_ids" [M] (digit + 1),
  "masks" uint8 [M,S,S] (the ink), "alphas" float32 [M,S,S], "digit_indices" [M],
  "squares" [M, 3] (top, left, side) where each digit was pasted}."""
  rng = np.random.default_rng([seed, split_id, index])
  background = _background(photos, rng, size)
  image = background.astype(np.float32)
  taken = np.zeros([size, size], bool)
  boxes, categories, masks, alphas, chosen, squares = [], [], [], [], [], []
  for _ in range(int(rng.integers(1, max_digits + 1))):
    digit = int(pool[rng.integers(len(pool))])
    side = int(rng.integers(max(8, size // 8), size * 7 // 16 + 1))  # 16..56 px at 128
    for _attempt in range(20):  # a free square (pasted digits never overlap)
      top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
      if not taken[top:top + side, left:left + side].any():
        break
    else:
      continue
    alpha = np.zeros([size, size], np.float32)
    alpha[top:top + side, left:left + side] = upscale(digits[digit], side)
    mask = alpha >= INK_THRESHOLD
    if mask.sum() < 4:
      continue
    # Ink that contrasts with the photo under it: dark on light, light on dark.
    light = background[top:top + side, left:left + side].mean() > 127
    color = rng.uniform(0, 90, 3) if light else rng.uniform(165, 255, 3)
    image = image * (1.0 - alpha[..., None]) + color * alpha[..., None]
    taken[top:top + side, left:left + side] = True
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    boxes.append([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
    categories.append(int(labels[digit]) + 1)
    masks.append(mask.astype(np.uint8))
    alphas.append(alpha)
    chosen.append(digit)
    squares.append([top, left, side])
  return {"image": np.clip(np.round(image), 0, 255).astype(np.uint8), "background": background,
          "boxes": np.array(boxes, np.float32).reshape(-1, 4),
          "category_ids": np.array(categories, np.int64),
          "masks": np.array(masks, np.uint8).reshape(-1, size, size),
          "alphas": np.array(alphas, np.float32).reshape(-1, size, size),
          "digit_indices": np.array(chosen, np.int64),
          "squares": np.array(squares, np.int64).reshape(-1, 3)}


def scene_example(scene: dict, image_id: int) -> tf.train.Example:
  """OD-API detection keys + instance masks + the semantic map, as make_shapes_dataset."""
  size = scene["image"].shape[0]
  example = tf_example.build_example(
      encoded_image=tf_example.encode_jpeg(scene["image"]), image_format="jpeg",
      source_id=str(image_id), height=size, width=size, boxes_yxyx=scene["boxes"],
      category_ids=scene["category_ids"],
      category_names=[CLASS_NAMES[c - 1] for c in scene["category_ids"]],
      areas=scene["masks"].sum(axis=(1, 2)).astype(np.float32), masks=scene["masks"],
      filename=f"{image_id}.jpg")
  for key, value in mask_features(semantic_map(scene["masks"], scene["category_ids"], size,
                                               size)).items():
    example.features.feature[key].CopyFrom(value)
  return example


def coco_rows(scene: dict, image_id: int) -> tuple[dict, list[dict]]:
  """(COCO image row, annotation rows without ids) for one scene; bbox [x, y, w, h]."""
  size = scene["image"].shape[0]
  annotations = []
  for box, category, mask in zip(scene["boxes"], scene["category_ids"], scene["masks"]):
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    y1, x1, y2, x2 = (float(v) for v in box)
    annotations.append({"image_id": image_id, "category_id": int(category),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()),
                        "iscrowd": 0, "segmentation": rle})
  return ({"id": image_id, "height": size, "width": size, "file_name": f"{image_id}.jpg"},
          annotations)


def write_scenes(output_dir: str, split: str, num_scenes: int, digits, labels, pool, photos,
                 seed: int, size: int, max_digits: int, num_shards: int) -> dict:
  """Writes scene i to shard i % num_shards; returns the split's COCO dict."""
  split_id, id_offset = {"train": (0, 0), "val": (1, 1_000_000)}[split]
  num_shards = max(1, min(num_shards, num_scenes))
  paths = [os.path.join(output_dir, f"{split}-{s:05d}-of-{num_shards:05d}.tfrecord")
           for s in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  images, annotations = [], []
  progress = Progress(num_scenes, unit="scenes")
  try:
    for index in range(num_scenes):
      scene = render_scene(digits, labels, pool, photos, seed, split_id, index, size,
                           max_digits)
      image_id = id_offset + index
      writers[index % num_shards].write(scene_example(scene, image_id).SerializeToString())
      image_row, rows = coco_rows(scene, image_id)
      images.append(image_row)
      annotations += rows
      progress.update(index + 1, prefix=f"[scenes {split}] ")
  finally:
    for writer in writers:
      writer.close()
  for i, row in enumerate(annotations, start=1):
    row["id"] = i
  categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
  return {"images": images, "annotations": annotations, "categories": categories}


def write_image_folder(image_dir: str, digits, labels, indices, size: int) -> None:
  for name in CLASS_NAMES:
    tf.io.gfile.makedirs(os.path.join(image_dir, name))
  progress = Progress(len(indices), unit="images")
  for done, index in enumerate(indices, start=1):
    path = os.path.join(image_dir, CLASS_NAMES[labels[index]], f"{index:04d}.png")
    write_bytes(path, png_bytes(classification_image(digits[index], size)))
    progress.update(done, prefix=f"[{os.path.basename(image_dir)} folder] ")


def make_sets(output_dir: str, seed: int = 0, val_fraction: float = 0.2,
              classification_size: int = 32, num_train_scenes: int = 1500,
              num_val_scenes: int = 300, scene_size: int = 128, max_digits: int = 4,
              num_shards: int = 4, limit_per_class: int = 0) -> dict:
  """Writes both sets; returns {"classification": dir, "scenes": dir, "train_digits": n,
  "val_digits": n, "train_objects": n, "val_objects": n}."""
  if scene_size < 64 or max_digits < 1 or not 0 < val_fraction < 1:
    raise ValueError(f"need --scene_size >= 64, --max_digits >= 1 and 0 < --val_fraction < 1; "
                     f"got {scene_size}, {max_digits}, {val_fraction}.")
  digits, labels = load_digits()
  splits = split_indices(labels, val_fraction, seed, limit_per_class)
  classification_dir = os.path.join(output_dir, "classification")
  for split, indices in splits.items():
    folder = os.path.join(classification_dir, "images", split)
    write_image_folder(folder, digits, labels, indices, classification_size)
    create_classification_tfrecord.convert(
        folder, os.path.join(classification_dir, split), num_shards=num_shards,
        label_map_file=(os.path.join(classification_dir, "label_map.json")
                        if split == "val" else None), seed=seed)
  scenes_dir = os.path.join(output_dir, "scenes")
  tf.io.gfile.makedirs(scenes_dir)
  photos = load_photos()
  counts = {}
  for split, count in (("train", num_train_scenes), ("val", num_val_scenes)):
    coco = write_scenes(scenes_dir, split, count, digits, labels, splits[split], photos, seed,
                        scene_size, max_digits, num_shards)
    write_json(os.path.join(scenes_dir, f"{split}_annotations.json"), coco, indent=None)
    counts[split] = len(coco["annotations"])
  label_maps.write_label_map(os.path.join(scenes_dir, label_maps.LABEL_MAP_NAME),
                             {i + 1: n for i, n in enumerate(CLASS_NAMES)})
  print(f"Wrote the digits sets to {output_dir}: classification {len(splits['train'])} train / "
        f"{len(splits['val'])} val digits ({classification_size}x{classification_size}); scenes "
        f"{num_train_scenes} train / {num_val_scenes} val ({scene_size}x{scene_size}, "
        f"{counts['train']} / {counts['val']} digits).", flush=True)
  return {"classification": classification_dir, "scenes": scenes_dir,
          "train_digits": len(splits["train"]), "val_digits": len(splits["val"]),
          "train_objects": counts["train"], "val_objects": counts["val"]}


def main(argv) -> None:
  del argv
  make_sets(FLAGS.output_dir, FLAGS.seed, FLAGS.val_fraction, FLAGS.classification_size,
            FLAGS.num_train_scenes, FLAGS.num_val_scenes, FLAGS.scene_size, FLAGS.max_digits,
            FLAGS.num_shards, FLAGS.limit_per_class)


if __name__ == "__main__":
  app.run(main)
