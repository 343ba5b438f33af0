"""Checks and repairs for a COCO-format detection data set (instances JSON + image folder).

`validate_coco(coco, image_dir)` checks every record and returns a `ValidationReport`: the
problems by kind (with example ids), what was repaired (only the repairs asked for in
`Repairs`) and the data set after those repairs. No TensorFlow here (image files on gs://
and other remote file systems are read through tf.io.gfile, imported only then), so the
validator starts in a second.

Boxes in the JSON are COCO `[x, y, w, h]` pixels. Images are read like the converters read
them: fully decoded (PIL `.load()`, so a truncated file is caught), EXIF orientation applied
(`PIL.ImageOps.exif_transpose`), so sizes and boxes are checked in the upright frame, the
frame COCO annotation tools show and the frame the converters write.
"""
import collections
import concurrent.futures
import dataclasses
import math
import os
from typing import Callable

from detlab.data.coco_fields import (  # noqa: F401 (segmentation_problem: re-exported)
    category_name_problem, normalise_annotation, segmentation_problem)
# Re-exported: the converters and the validator CLI read images through these names.
from detlab.data.image_files import (  # noqa: F401 pylint: disable=unused-import
    DecodedImage, ImageError, decode_image, image_path, read_bytes)

ERROR, WARNING = "error", "warning"


@dataclasses.dataclass(frozen=True)
class Kind:
  severity: str
  repair_flag: str | None  # the repair that fixes it (a Repairs field), None: not repairable
  fix: str                 # what the user should do


_IMAGES, _ANNS, _IDS, _CLIP = ("drop_bad_images", "drop_bad_annotations",
                               "renumber_annotation_ids", "clip_boxes")
KINDS: dict[str, Kind] = {  # the table lists them in this order; the repair switch follows
    "duplicate_image_id": Kind(ERROR, _IMAGES, "give every images[] entry a unique id "
                               "(annotations refer to images by id: theirs are ambiguous)"),
    "missing_image": Kind(ERROR, _IMAGES, "check --image_dir and file_name"),
    "corrupt_image": Kind(ERROR, _IMAGES, "re-download or re-export the file"),
    "non_integer_image_id": Kind(ERROR, None, "image ids must be integers (image/source_id "
                                 "and COCO evaluation need them); renumber the images"),
    "size_mismatch": Kind(ERROR, _IMAGES, "fix height/width in the JSON (compared after "
                          "EXIF orientation)"),
    "duplicate_annotation_id": Kind(ERROR, _IDS, "give every annotation a unique id"),
    "bad_annotation_id": Kind(ERROR, _IDS, "give every annotation an integer id"),
    "unknown_image_id": Kind(ERROR, _ANNS, "add the image to images[]"),
    "unknown_category": Kind(ERROR, _ANNS, "add the category to categories[]"),
    "invalid_category_id": Kind(ERROR, None, "category ids must be integers >= 1 (class "
                                "index = id - 1); renumber the categories"),
    "category_without_name": Kind(ERROR, None, "give every category a non-empty 'name' "
                                  "(label_map.json and the per-class AP table use it)"),
    "bad_iscrowd": Kind(ERROR, _ANNS, "iscrowd must be 0 or 1"),
    "bad_area": Kind(ERROR, _ANNS, "area must be a number >= 0 (pixels; COCO's small/"
                     "medium/large split reads it)"),
    "degenerate_box": Kind(ERROR, _ANNS, "bbox must be 4 finite numbers, w > 0, h > 0"),
    "box_outside_image": Kind(ERROR, _CLIP, "fix the box (--clip_boxes clips it to the "
                              "image and drops it if nothing is left)"),
    "bad_segmentation": Kind(ERROR, _ANNS, "polygons need >= 3 points and some area inside "
                             "the image; an RLE's size must be [height, width] and its counts "
                             "cover that many pixels"),
    "box_slightly_outside": Kind(WARNING, _CLIP, "none needed: within --box_tolerance, the "
                                 "input pipeline clips it"),
    # Normalised, in the dataset the report returns (so in what the converter writes):
    "iscrowd_not_integer": Kind(WARNING, None, "none needed: read as the 0/1 it spells "
                                "(pycocotools alone reads the string \"0\" as a crowd)"),
    "missing_iscrowd": Kind(WARNING, None, "none needed: read as 0 (not a crowd)"),
    "missing_area": Kind(WARNING, None, "none needed if boxes are all you have: set to the "
                         "box's w * h (COCO's own area is the mask's)"),
    "area_not_number": Kind(WARNING, None, "none needed: the numeric string is read"),
    "too_many_instances": Kind(WARNING, None, "training keeps the largest max_instances "
                               "boxes, evaluation the first ones; raise "
                               "InputConfig.max_instances (and --max_instances) to keep all"),
}


@dataclasses.dataclass
class Repairs:
  """Which repairs to apply; each is counted in the report. Nothing is repaired by default."""
  clip_boxes: bool = False              # clip boxes to the image, drop those left empty
  drop_bad_annotations: bool = False    # degenerate box, unknown category / image, bad mask
  drop_bad_images: bool = False         # missing/corrupt file, size mismatch, duplicate id
  renumber_annotation_ids: bool = False  # give duplicated annotation ids fresh ones

  @classmethod
  def all(cls) -> "Repairs":
    return cls(True, True, True, True)

  def allows(self, kind: str) -> bool:
    flag = KINDS[kind].repair_flag
    return bool(flag and getattr(self, flag))


@dataclasses.dataclass
class Problem:
  kind: str
  message: str
  image_id: object = None
  annotation_id: object = None
  repaired: bool = False
  category_id: object = None

  @property
  def where(self) -> str:
    """The record it is about, for the table: 'ann 7', 'image 3' or 'category 0'."""
    for name, value in (("ann", self.annotation_id), ("image", self.image_id),
                        ("category", self.category_id)):
      if value is not None:
        return f"{name} {value}"
    return "-"

  @property
  def severity(self) -> str:
    return KINDS[self.kind].severity


@dataclasses.dataclass
class ValidationReport:
  """What validate_coco found. `dataset` is the COCO dict after the repairs asked for."""
  problems: list[Problem]
  repairs: collections.Counter      # action -> count, e.g. "dropped annotation" -> 3
  dataset: dict
  num_images: int = 0               # in the input
  num_annotations: int = 0
  num_images_without_annotations: int = 0  # in `dataset` (kept: they are valid negatives)
  image_sizes: dict = dataclasses.field(default_factory=dict)  # id -> (height, width) read

  def kinds(self) -> collections.Counter:
    return collections.Counter(p.kind for p in self.problems)

  @property
  def errors(self) -> list[Problem]:
    """Errors not repaired: these would corrupt training."""
    return [p for p in self.problems if p.severity == ERROR and not p.repaired]

  @property
  def ok(self) -> bool:
    return not self.errors

  def table(self, examples: int = 3) -> str:
    """Problems by kind: severity, count, repaired, example ids, and the fix."""
    if not self.problems:
      return "No problems found."
    rows = [("kind", "severity", "count", "repaired", "examples")]
    fixes = []
    for kind in KINDS:
      found = [p for p in self.problems if p.kind == kind]
      if not found:
        continue
      ids = [p.where for p in found[:examples]]
      rows.append((kind, KINDS[kind].severity, str(len(found)),
                   str(sum(p.repaired for p in found)), ", ".join(ids)))
      flag = KINDS[kind].repair_flag
      fixes.append(f"  {kind}: {found[0].message}\n    fix: {KINDS[kind].fix}"
                   + (f"; or --{flag}" if flag else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + ["First of each kind, and the fix:"] + fixes)

  def summary(self) -> str:
    kept = self.dataset
    repaired = ", ".join(f"{v} {k}" for k, v in sorted(self.repairs.items())) or "none"
    warnings = sum(p.severity == WARNING for p in self.problems)
    return (f"{self.num_images} images, {self.num_annotations} annotations in; "
            f"{len(kept['images'])} images ({self.num_images_without_annotations} without "
            f"annotations, kept), {len(kept['annotations'])} annotations, "
            f"{len(kept['categories'])} categories after repairs. "
            f"{len(self.errors)} errors left, {warnings} warnings. Repairs: {repaired}.")


def _check_image(entry: dict, image_dir: str, apply_exif: bool):
  """(image id, (height, width) or None, Problem or None) for one images[] entry."""
  image_id = _key(entry.get("id"))
  path = image_path(image_dir, str(entry.get("file_name", "")))
  try:
    data = read_bytes(path)
    width, height = decode_image(data, path, apply_exif).image.size
  except ImageError as e:
    return image_id, None, Problem(e.kind, str(e), image_id)
  want = (entry.get("height"), entry.get("width"))
  if want != (None, None) and want != (height, width):
    hint = ""
    if apply_exif and want == (width, height):
      hint = (" (the JSON matches the stored pixels before EXIF orientation: were the boxes "
              "drawn on the unrotated image? then pass --ignore_exif_orientation)")
    return image_id, (height, width), Problem(
        "size_mismatch", f"{path}: JSON says {want[0]}x{want[1]} (h x w), the file is "
        f"{height}x{width}{hint}", image_id)
  return image_id, (height, width), None


def _key(value):
  """An id as a dict key: unhashable ids (lists, dicts) become their repr, to be reported."""
  return repr(value) if isinstance(value, (list, dict)) else value


def _box(value) -> list[float] | None:
  """bbox as 4 finite floats, or None."""
  try:
    box = [float(v) for v in value]
  except (TypeError, ValueError):
    return None
  return box if len(box) == 4 and all(math.isfinite(v) for v in box) else None


def validate_coco(coco: dict, image_dir: str, max_instances: int = 100,
                  repairs: Repairs | None = None, check_images: bool = True,
                  check_masks: bool = False, apply_exif: bool = True,
                  box_tolerance: float = 1.0, workers: int = 0,
                  on_image: Callable[[int, int], None] | None = None,
                  source: str = "") -> ValidationReport:
  """Checks a COCO instances dict against its image folder; repairs only what `repairs` asks.

  box_tolerance: pixels a box may extend past the image before it is an error (COCO's own
  float boxes overshoot by fractions of a pixel). on_image(done, total) reports progress.
  source: the JSON file's name, for the messages about fields (iscrowd, area, names).
  Raises ValueError when the JSON is not a COCO instances file at all.
  """
  for key in ("images", "annotations", "categories"):
    if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
      raise ValueError(f"not a COCO instances file: the top-level {key!r} list is missing")
    bad = next((i for i, row in enumerate(coco[key]) if not isinstance(row, dict)), None)
    if bad is not None:
      raise ValueError(f"not a COCO instances file: {key}[{bad}] is not an object")
  repairs = repairs or Repairs()
  problems, counts = [], collections.Counter()

  def add(kind, message, image_id=None, annotation_id=None, category_id=None) -> bool:
    problem = Problem(kind, message, image_id, annotation_id, repairs.allows(kind),
                      category_id)
    problems.append(problem)
    return problem.repaired

  where = f"{source}: " if source else ""
  categories = {}
  for category in coco["categories"]:
    cid = category.get("id")
    if not isinstance(cid, int) or isinstance(cid, bool) or cid < 1:
      add("invalid_category_id", f"category {category!r} has id {cid!r}",
          category_id=repr(cid))
    else:  # the name is checked only for a usable id: one problem per category
      categories[cid] = str(category.get("name", cid))
      reason = category_name_problem(category)
      if reason:
        add("category_without_name", f"{where}{reason}", category_id=cid)

  # Images: duplicate ids, then every file decoded (in threads: PIL releases the GIL).
  id_counts = collections.Counter(_key(entry.get("id")) for entry in coco["images"])
  bad_images = set()
  for image_id in id_counts:
    if not isinstance(image_id, int) or isinstance(image_id, bool):
      add("non_integer_image_id", f"image id {image_id!r} is not an integer", image_id)
  for image_id, n in id_counts.items():
    if n > 1:
      add("duplicate_image_id", f"image id {image_id} is used by {n} images[] entries",
          image_id)
      bad_images.add(image_id)
  sizes = {_key(e.get("id")): (e.get("height"), e.get("width")) for e in coco["images"]}
  read_sizes = {}
  if check_images:
    total = len(coco["images"])
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      results = pool.map(lambda e: _check_image(e, image_dir, apply_exif), coco["images"])
      for done, (image_id, size, problem) in enumerate(results, start=1):
        if size is not None:
          read_sizes[image_id] = size
          if image_id not in bad_images:
            sizes[image_id] = size
        if problem is not None:
          problems.append(dataclasses.replace(problem, repaired=repairs.allows(problem.kind)))
          bad_images.add(image_id)
        if on_image:
          on_image(done, total)

  # Annotations.
  kept_annotations, ann_ids = [], collections.Counter(
      _key(a.get("id")) for a in coco["annotations"])
  next_id = max([a for a in ann_ids if isinstance(a, int)] + [0]) + 1
  seen_ids = set()
  for ann in coco["annotations"]:
    ann, aid, image_id = dict(ann), _key(ann.get("id")), _key(ann.get("image_id"))
    drop = False
    if image_id not in sizes:
      drop |= add("unknown_image_id", f"annotation {aid} refers to image {image_id!r}, "
                  "which is not in images[]", image_id, aid)
    elif image_id in bad_images and repairs.drop_bad_images:
      counts["dropped annotation of a dropped image"] += 1
      continue
    if _key(ann.get("category_id")) not in categories:
      drop |= add("unknown_category", f"annotation {aid} has category_id "
                  f"{ann.get('category_id')!r}; categories[] has {sorted(categories)}",
                  image_id, aid)
    box = _box(ann.get("bbox", ()))
    if box is None or box[2] <= 0 or box[3] <= 0:
      drop |= add("degenerate_box", f"annotation {aid} has bbox {ann.get('bbox')!r} "
                  "([x, y, w, h] pixels)", image_id, aid)
    elif image_id in sizes and None not in sizes[image_id]:
      height, width = sizes[image_id]
      x, y, w, h = box
      overshoot = max(-x, -y, x + w - width, y + h - height)
      if overshoot > 0:
        kind = "box_outside_image" if overshoot > box_tolerance else "box_slightly_outside"
        if add(kind, f"annotation {aid} bbox {box} ([x, y, w, h]) extends {overshoot:.2f} px "
               f"outside image {image_id} ({height}x{width} h x w)", image_id, aid):
          x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
          x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
          if x2 <= x1 or y2 <= y1:
            counts["dropped box outside the image"] += 1
            continue
          ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
          counts["clipped box"] += 1
      if check_masks and "segmentation" in ann:
        reason = segmentation_problem(ann["segmentation"], height, width)
        if reason:
          drop |= add("bad_segmentation", f"annotation {aid}: {reason}", image_id, aid)
    ann, found = normalise_annotation(ann)  # iscrowd "0" -> 0, missing area -> w * h ...
    for kind, what in found:
      drop |= add(kind, f"{where}annotation {aid} {what}", image_id, aid)
      if KINDS[kind].severity == WARNING:
        counts[f"normalised {kind.replace('_', ' ')}"] += 1
    if drop:
      counts["dropped annotation"] += 1
      continue
    if not isinstance(aid, int) or isinstance(aid, bool):
      if add("bad_annotation_id", f"annotation {aid!r} on image {image_id} has no integer "
             "id", image_id, aid):
        ann["id"], next_id = next_id, next_id + 1
        counts["renumbered annotation id"] += 1
    elif ann_ids[aid] > 1:
      if aid in seen_ids and add("duplicate_annotation_id", f"annotation id {aid} is used "
                                 f"{ann_ids[aid]} times", image_id, aid):
        ann["id"], next_id = next_id, next_id + 1
        counts["renumbered annotation id"] += 1
      seen_ids.add(aid)
    kept_annotations.append(ann)

  kept_images = [e for e in coco["images"]
                 if not (_key(e.get("id")) in bad_images and repairs.drop_bad_images)]
  counts["dropped image"] += len(coco["images"]) - len(kept_images)
  per_image = collections.Counter(_key(a.get("image_id")) for a in kept_annotations)
  for image_id, n in sorted(per_image.items(), key=lambda kv: str(kv[0])):
    if n > max_instances:
      add("too_many_instances", f"image {image_id} has {n} annotations > max_instances="
          f"{max_instances}", image_id)
  dataset = dict(coco, images=kept_images, annotations=kept_annotations)
  return ValidationReport(
      problems=problems, repairs=+counts, dataset=dataset, num_images=len(coco["images"]),
      num_annotations=len(coco["annotations"]),
      num_images_without_annotations=sum(
          _key(e.get("id")) not in per_image for e in kept_images),
      image_sizes=read_sizes)
