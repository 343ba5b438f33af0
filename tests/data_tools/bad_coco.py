"""A tiny COCO-format data set with every problem the validator knows, made on the fly.

Images (id: file, h x w): 1 a.jpg 48x64 RGB; 2 empty.jpg 32x32 (no annotations); 3 gray.png
40x40 grayscale PNG; 4 cmyk.jpg 32x48 CMYK JPEG; 5 exif.jpg stored 32x48 with EXIF
orientation 6, upright 48x32, a red square under its box; 6 crowd.jpg 40x40 (crowd with
uncompressed RLE, compressed RLE); 7 many.jpg 64x64 (5 boxes > max_instances 4).
Bad: 8 corrupt.jpg (not an image), 9 missing.jpg (no file), 10 truncated.jpg, 11 small.jpg
(32x32 file, JSON says 64x64), 12 twice (duplicate image id). Annotation problems: 3
degenerate (w = 0), 4 unknown category 55, 6 outside image 3 (clip -> [30, 5, 10, 10]), 200
used twice, 40 on unknown image 999. Category ids 1, 7, 90 (non-contiguous).
"""
import io
import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 7, "name": "car"},
              {"id": 90, "name": "toothbrush"}]
MAX_INSTANCES = 4
CLEAN_IMAGE_IDS = {1, 2, 3, 4, 5, 6, 7}
EXPECTED = {  # kind -> the ids the report must name (image ids, or annotation ids)
    "corrupt_image": {8, 10}, "missing_image": {9}, "size_mismatch": {11},
    "duplicate_image_id": {12}, "unknown_image_id": {40}, "unknown_category": {4},
    "degenerate_box": {3}, "box_outside_image": {6}, "duplicate_annotation_id": {200},
    "too_many_instances": {7}}
RED_BOX = [4, 30, 10, 10]  # image 5, [x, y, w, h] in the upright frame


def make_crowd_mask() -> np.ndarray:
  """Image 6's crowd mask, uint8 [40, 40]; its vertical flip is annotation 11's mask."""
  mask = np.zeros((40, 40), np.uint8)
  mask[2:12, 3:20] = 1
  return mask


def _noise(height: int, width: int, seed: int) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


def _jpeg(image: Image.Image, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=95, **kwargs)
  return buffer.getvalue()


def _square(x: float, y: float, w: float, h: float) -> list:
  return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ann(aid: int, image_id: int, category: int, bbox, segmentation=None, iscrowd: int = 0):
  return {"id": aid, "image_id": image_id, "category_id": category, "bbox": list(bbox),
          "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd,
          "segmentation": segmentation if segmentation is not None else _square(*bbox)}


def make_coco_fixture(root) -> dict:
  """Writes root/images/* and root/instances.json; returns {"image_dir", "json", "coco"}."""
  images_dir = root / "images"
  images_dir.mkdir()
  files = {
      "a.jpg": _jpeg(Image.fromarray(_noise(48, 64, 1))),
      "empty.jpg": _jpeg(Image.fromarray(_noise(32, 32, 2))),
      "cmyk.jpg": _jpeg(Image.fromarray(_noise(32, 48, 4)).convert("CMYK")),
      "crowd.jpg": _jpeg(Image.fromarray(_noise(40, 40, 6))),
      "many.jpg": _jpeg(Image.fromarray(_noise(64, 64, 7))),
      "corrupt.jpg": b"this is not an image at all",
      "small.jpg": _jpeg(Image.fromarray(_noise(32, 32, 11))),
      "dupa.jpg": _jpeg(Image.fromarray(_noise(32, 32, 12))),
      "dupb.jpg": _jpeg(Image.fromarray(_noise(32, 32, 13))),
  }
  gray = io.BytesIO()
  Image.fromarray(_noise(40, 40, 3)[:, :, 0]).save(gray, format="PNG")
  files["gray.png"] = gray.getvalue()
  full = _jpeg(Image.fromarray(_noise(64, 64, 10)))
  files["truncated.jpg"] = full[:len(full) * 6 // 10]
  upright = np.full((48, 32, 3), 30, np.uint8)
  x, y, w, h = RED_BOX
  upright[y:y + h, x:x + w] = (230, 20, 20)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 clockwise to display": stored pixels are the upright ones
  stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # turned back
  files["exif.jpg"] = _jpeg(stored, exif=exif.tobytes())
  for name, data in files.items():
    (images_dir / name).write_bytes(data)

  entries = [(1, "a.jpg", 48, 64), (2, "empty.jpg", 32, 32), (3, "gray.png", 40, 40),
             (4, "cmyk.jpg", 32, 48), (5, "exif.jpg", 48, 32), (6, "crowd.jpg", 40, 40),
             (7, "many.jpg", 64, 64), (8, "corrupt.jpg", 32, 32), (9, "missing.jpg", 32, 32),
             (10, "truncated.jpg", 64, 64), (11, "small.jpg", 64, 64),
             (12, "dupa.jpg", 32, 32), (12, "dupb.jpg", 32, 32)]
  images = [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in entries]
  crowd_mask = make_crowd_mask()
  uncompressed = {"size": [40, 40], "counts": _uncompressed_counts(crowd_mask)}
  compressed = mask_util.encode(np.asfortranarray(crowd_mask[::-1].copy()))
  compressed["counts"] = compressed["counts"].decode("ascii")
  annotations = [
      _ann(1, 1, 1, [4.5, 6.25, 20.0, 16.5]),
      _ann(2, 1, 90, [30, 10, 25, 30], [[30, 10, 55, 10, 42, 40]]),  # a triangle
      _ann(3, 1, 1, [10, 10, 0, 5]),
      _ann(4, 1, 55, [1, 1, 5, 5]),
      _ann(5, 3, 7, [2, 2, 10, 10]),
      _ann(6, 3, 7, [30, 5, 20, 10]),
      _ann(7, 4, 90, [8, 8, 16, 12]),
      _ann(8, 5, 1, RED_BOX),
      _ann(9, 6, 1, [3, 2, 17, 10], uncompressed, iscrowd=1),
      _ann(11, 6, 7, [3, 28, 17, 10], compressed),
      _ann(200, 6, 7, [20, 20, 10, 10]),
      _ann(20, 9, 1, [1, 1, 5, 5]),
      _ann(30, 12, 1, [1, 1, 5, 5]),
      _ann(40, 999, 1, [1, 1, 5, 5]),
  ]
  for k in range(5):
    annotations.append(_ann(200 if k == 0 else 300 + k, 7, 1 if k % 2 else 90,
                            [2 + 12 * k, 3 + 10 * k, 9.5, 8.5]))
  coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
  path = root / "instances.json"
  path.write_text(json.dumps(coco))
  return {"image_dir": str(images_dir), "json": str(path), "coco": coco}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
  """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
  flat = mask.flatten(order="F")
  counts, value, run = [], 0, 0
  for pixel in flat:
    if pixel != value:
      counts.append(run)
      value, run = pixel, 0
    run += 1
  return counts + [run]
