"""The COCO annotation fields evaluation and the converters rely on: iscrowd, area, name,
segmentation.

Real COCO-format files write `iscrowd` as a string ("0"), leave `area` or `iscrowd` out, or
give a category no `name`. pycocotools reads `iscrowd` by truth value (so "0" is a crowd box,
ignored in evaluation, and the converter's bool("0") made it one in training too) and needs
`area` for the small/medium/large split. These are normalised once, here, for the
validator (and so the converter) and the evaluator alike; what cannot be read is an error.
No TensorFlow here (the validator starts without it).
"""
import math

# The spellings of a crowd flag seen in the wild; 1 == True and 0 == False as dict keys.
_CROWD = {0: 0, 1: 1, "0": 0, "1": 1, "false": 0, "true": 1}


def crowd_flag(value) -> int | None:
  """0 or 1 for a crowd flag (0/1, False/True, 0.0/1.0, "0"/"1", "false"/"true"), else None."""
  if isinstance(value, str):
    value = value.strip().lower()
  elif isinstance(value, float) and value in (0.0, 1.0):
    value = int(value)
  elif not isinstance(value, int):  # bool is an int
    return None
  return _CROWD.get(value)


def _number(value) -> float | None:
  if isinstance(value, bool):
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) and number >= 0 else None


def normalise_annotation(ann: dict) -> tuple[dict, list[tuple[str, str]]]:
  """(a copy with an int `iscrowd` and a float `area`, [(kind, what was found)]).

  kinds: 'iscrowd_not_integer', 'missing_iscrowd' (read as 0: not a crowd, COCO's meaning of
  the absent flag), 'missing_area' (set to the box's w * h; COCO's own area is the mask's,
  which a box-only file has not got), 'area_not_number' (a numeric string, read as the
  number): normalised. 'bad_iscrowd', 'bad_area': left as they are (errors).
  """
  ann, found = dict(ann), []
  if "iscrowd" not in ann:
    ann["iscrowd"] = 0
    found.append(("missing_iscrowd", "has no 'iscrowd'; read as 0 (not a crowd)"))
  else:
    flag = crowd_flag(ann["iscrowd"])
    if flag is None:
      found.append(("bad_iscrowd", f"has iscrowd {ann['iscrowd']!r}, which is not 0 or 1"))
    elif type(ann["iscrowd"]) is not int:  # noqa: E721 (bool is an int subclass)
      found.append(("iscrowd_not_integer", f"has iscrowd {ann['iscrowd']!r} "
                    f"({type(ann['iscrowd']).__name__}); read as {flag}"))
      ann["iscrowd"] = flag
  if "area" not in ann:
    box = ann.get("bbox")
    try:
      ann["area"] = float(box[2]) * float(box[3])
      found.append(("missing_area", f"has no 'area'; set to the box's w * h = "
                    f"{ann['area']:g}"))
    except (TypeError, ValueError, IndexError):
      pass  # no usable box either: the box check reports it
  elif not isinstance(ann["area"], (int, float)) or isinstance(ann["area"], bool):
    number = _number(ann["area"])
    if number is None:
      found.append(("bad_area", f"has area {ann['area']!r}, not a number >= 0"))
    else:
      found.append(("area_not_number", f"has area {ann['area']!r} (a string); read as "
                    f"{number:g}"))
      ann["area"] = number
  elif _number(ann["area"]) is None:
    found.append(("bad_area", f"has area {ann['area']!r}, not a number >= 0"))
  return ann, found


def category_name_problem(category: dict) -> str | None:
  """Why a categories[] entry's name is unusable (label map, per-class AP table), else None."""
  name, cid = category.get("name"), category.get("id")
  if name is None:
    return f"category {cid!r} has no 'name'"
  if not isinstance(name, str):
    return f"category {cid!r} has name {name!r}, not a string"
  if not name.strip():
    return f"category {cid!r} has an empty 'name'"
  return None


def _polygon_area(polygon: list) -> float:
  xs, ys = polygon[0::2], polygon[1::2]
  return 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))


def segmentation_problem(segmentation, height: int, width: int) -> str | None:
  """Why a COCO segmentation (polygons, compressed or uncompressed RLE) cannot be the mask of
  an object in a height x width image, else None.

  Named: an empty polygon list, a polygon of fewer than 3 points, non-finite coordinates,
  polygons wholly outside the image or enclosing no area (pycocotools would rasterise an
  empty mask; a polygon only partly outside is cut at the image edge, as its box is by
  --clip_boxes), an RLE whose size is not [height, width], uncompressed RLE counts that
  are not run lengths or do not cover height x width pixels, compressed counts that are not
  a non-empty string.
  """
  if isinstance(segmentation, list):
    if not segmentation:
      return "empty polygon list"
    for polygon in segmentation:
      if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
        return "a polygon needs an even number (>= 6) of coordinates"
      if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 for v in polygon):
        return "polygon coordinates must be finite numbers"
    xs = [x for polygon in segmentation for x in polygon[0::2]]
    ys = [y for polygon in segmentation for y in polygon[1::2]]
    if max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height:
      return (f"the polygons (x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}) lie "
              f"outside the image (w x h = {width} x {height}): an empty mask")
    if sum(_polygon_area(polygon) for polygon in segmentation) <= 0:
      return "the polygons enclose no area (an empty mask)"
    return None
  if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
    size = segmentation["size"]
    if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
      return f"RLE size {size} != image [height, width] {[height, width]}"
    counts = segmentation["counts"]
    if isinstance(counts, list):
      if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return "uncompressed RLE counts must be run lengths (integers >= 0)"
      if sum(counts) != height * width:
        return (f"uncompressed RLE counts cover {sum(counts)} pixels; the {height} x {width} "
                f"image has {height * width}")
      return None
    if not isinstance(counts, (str, bytes)) or not counts:
      return "compressed RLE counts must be a non-empty string"
    return None
  return "not a polygon list or an RLE dict"


def normalise_groundtruth(coco: dict, source: str) -> dict:
  """A COCO dict ready for COCOeval: every annotation normalised; raises ValueError naming
  `source` and the annotation ids when a field cannot be read."""
  annotations, errors = [], []
  for ann in coco.get("annotations", []):
    fixed, found = normalise_annotation(ann)
    errors += [f"annotation {ann.get('id')!r} {what}" for kind, what in found
               if kind.startswith("bad_")]
    annotations.append(fixed)
  if errors:
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    raise ValueError(f"{source}: " + "; ".join(errors[:5]) + more + ". Fix the JSON, or run "
                     "`python -m data_tools.validate_dataset --drop_bad_annotations "
                     "--output_annotations_file=...` and evaluate against its output.")
  return dict(coco, annotations=annotations)
