r"""Pascal VOC (XML) -> sharded TFRecords in the OD-API layout, validated first.

  python -m data_tools.create_voc_tfrecord --data_dir=VOCdevkit/VOC2007 --split=trainval \
      --output_file_prefix=data/voc/trainval --num_shards=4 [--repair]
  python -m data_tools.create_voc_tfrecord --data_dir=VOCdevkit/VOC2012 --split=val \
      --instance_masks --output_file_prefix=data/voc_masks/val

Reads ImageSets/Main/<split>.txt, Annotations/<name>.xml and JPEGImages/<name>.jpg. Class ids
are the 20 VOC names in their standard order, 1..20 (aeroplane = 1 ... tvmonitor = 20);
label_map.json is written beside the shards. The difficult flag is kept
(image/object/difficult, 0/1; difficult objects are not dropped). source_id is numeric: the
name's digits ("2008_000123" -> 2008000123, "000005" -> 5); when names have other
characters or would collide, images are numbered 1..N in split order instead (the name stays
in image/filename).

Instance masks (--instance_masks): VOC 2012's SegmentationObject/<name>.png (a palette PNG
whose index k > 0 marks the k-th <object> of the image's XML, 0 background, 255 the void
border, which belongs to no instance) become one mask per object (stored as COCO compressed
RLE in the intermediate dict, written as image/object/mask PNGs as with COCO's
--include_masks); the image list is then ImageSets/Segmentation/<split>.txt, the images that
have those PNGs. Named errors: a missing or unreadable PNG, a PNG not the image's size, an
index beyond the XML's object count. An object without a pixel keeps its box as its mask
(counted in the summary, as COCO annotations without a segmentation are).

VOC boxes are 1-based inclusive pixel corners; they become 0-based [x1, x2) pixels by
subtracting 1 from xmin and ymin (the TFDS convention). The data set goes through the same
validator and writer as COCO (data_tools.create_coco_tfrecord), so the same repair switches
apply and bad input is refused with a table of problems.
"""
import io
import sys
import xml.etree.ElementTree as ET

from absl import app, flags
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from data_tools import create_coco_tfrecord, validate_dataset
from detlab.data import dataset_checks
from detlab.data.dataset_checks import Repairs

FLAGS = flags.FLAGS

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
UNKNOWN_CLASS_ID = 0  # an unknown name keeps id 0, which the validator reports


def define_flags() -> None:
  validate_dataset.define_check_flags()
  flags.adopt_module_key_flags(validate_dataset)
  flags.DEFINE_string("data_dir", None, "A VOC year directory, e.g. VOCdevkit/VOC2007.")
  flags.DEFINE_string("split", "trainval", "ImageSets/Main/<split>.txt: train, val, ...")
  flags.DEFINE_string("output_file_prefix", None, "Output path prefix, e.g. data/voc/train.")
  flags.DEFINE_integer("num_shards", 4, "Number of TFRecord files.")
  flags.DEFINE_bool("instance_masks", False, "Store instance masks from SegmentationObject/ "
                    "PNGs (images listed in ImageSets/Segmentation/<split>.txt).")
  flags.mark_flags_as_required(["data_dir", "output_file_prefix"])


def _text(node, path: str, default: str | None = None) -> str:
  found = node.find(path)
  if found is None or found.text is None:
    if default is not None:
      return default
    raise ValueError(f"missing <{path}>")
  return found.text.strip()


def _numeric_ids(names: list[str]) -> list[int]:
  digits = [name.replace("_", "") for name in names]
  if all(d.isdigit() for d in digits) and len({int(d) for d in digits}) == len(digits):
    return [int(d) for d in digits]
  return list(range(1, len(names) + 1))


class InstanceMaskError(ValueError):
  """SegmentationObject PNGs that cannot give the objects' masks; nothing was written."""


def instance_segmentations(png: bytes, path: str, height: int, width: int,
                           num_objects: int) -> list[dict | None]:
  """One COCO compressed RLE (counts as str) per object of a SegmentationObject PNG (index
  k = object k, 1-based; 0 and 255 belong to none), None for an object without pixels;
  InstanceMaskError naming `path` for a wrong size or an index beyond `num_objects`."""
  try:
    picture = Image.open(io.BytesIO(png))
    picture.load()
  except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise InstanceMaskError(f"{path}: unreadable ({type(error).__name__}: {error})") from error
  if picture.mode not in ("P", "L"):
    raise InstanceMaskError(f"{path}: mode {picture.mode}; SegmentationObject PNGs are "
                            "palette (or 8-bit grey) images of instance indices")
  indices = np.asarray(picture, np.uint8)
  if indices.shape != (height, width):
    raise InstanceMaskError(f"{path}: {indices.shape[1]} x {indices.shape[0]} (w x h), the "
                            f"image is {width} x {height}")
  found = sorted(set(np.unique(indices).tolist()) - {0, 255})
  beyond = [k for k in found if k > num_objects]
  if beyond:
    raise InstanceMaskError(f"{path}: instance index(es) {beyond} but the XML has "
                            f"{num_objects} object(s) (index k is the k-th <object>)")
  segmentations = []
  for k in range(1, num_objects + 1):
    if k not in found:
      segmentations.append(None)
      continue
    rle = mask_util.encode(np.asfortranarray((indices == k).astype(np.uint8)))
    segmentations.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
  return segmentations


def voc_to_coco(data_dir: str, split: str, instance_masks: bool = False) -> dict:
  """A VOC split as a COCO instances dict (file_name relative to data_dir; annotations keep
  "difficult"). An unreadable XML becomes an images[] entry whose size is unknown and whose
  file name is the XML, so the validator reports it (corrupt_image) instead of crashing.
  instance_masks: the images of ImageSets/Segmentation/<split>.txt, each annotation with the
  "segmentation" of its SegmentationObject index (none where it has no pixel); raises
  InstanceMaskError listing every bad PNG."""
  list_file = f"{data_dir}/ImageSets/{'Segmentation' if instance_masks else 'Main'}/{split}.txt"
  try:
    names = [line.split()[0] for line in
             dataset_checks.read_bytes(list_file).decode().splitlines() if line.strip()]
  except dataset_checks.ImageError as e:
    raise FileNotFoundError(f"--data_dir/--split: {e}") from e
  class_ids = {name: i for i, name in enumerate(VOC_CLASSES, start=1)}
  images, annotations, mask_errors = [], [], []
  for image_id, name in zip(_numeric_ids(names), names):
    xml_path = f"Annotations/{name}.xml"
    try:
      root = ET.fromstring(dataset_checks.read_bytes(f"{data_dir}/{xml_path}"))
      entry = {"id": image_id, "file_name": f"JPEGImages/{_text(root, 'filename', name + '.jpg')}",
               "height": int(_text(root, "size/height")), "width": int(_text(root, "size/width"))}
      objects = []
      for obj in root.findall("object"):
        box = [float(_text(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((_text(obj, "name"), box, int(_text(obj, "difficult", "0"))))
    except (ET.ParseError, ValueError, dataset_checks.ImageError) as e:
      images.append({"id": image_id, "file_name": xml_path})  # reported as not an image
      print(f"warning: {data_dir}/{xml_path}: {e}", file=sys.stderr)
      continue
    images.append(entry)
    segmentations = [None] * len(objects)
    if instance_masks:
      png_path = f"{data_dir}/SegmentationObject/{name}.png"
      try:
        segmentations = instance_segmentations(
            dataset_checks.read_bytes(png_path), png_path, entry["height"], entry["width"],
            len(objects))
      except dataset_checks.ImageError as e:
        mask_errors.append(f"missing or unreadable instance PNG: {e}")
      except InstanceMaskError as e:
        mask_errors.append(str(e))
    for (label, (x1, y1, x2, y2), difficult), segmentation in zip(objects, segmentations):
      annotation = {
          "id": len(annotations) + 1, "image_id": image_id,
          "category_id": class_ids.get(label, UNKNOWN_CLASS_ID),
          "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "iscrowd": 0,
          "area": (x2 - x1 + 1) * (y2 - y1 + 1), "difficult": difficult, "voc_name": label}
      if segmentation is not None:  # none: the converter fills the box (and counts it)
        annotation["segmentation"] = segmentation
        annotation["area"] = float(mask_util.area(
            dict(segmentation, counts=segmentation["counts"].encode())))
      annotations.append(annotation)
  if mask_errors:
    raise InstanceMaskError("SegmentationObject problems (nothing written):\n  " +
                            "\n  ".join(mask_errors))
  categories = [{"id": i, "name": n} for n, i in class_ids.items()]
  return {"images": images, "annotations": annotations, "categories": categories}


def convert_voc(data_dir: str, split: str, output_file_prefix: str, num_shards: int = 4,
                repairs: Repairs | None = None, stream=sys.stdout,
                instance_masks: bool = False, **kwargs) -> int:
  """The tool without flags; returns the exit status (0 written, 1 refused: problems found,
  2 unreadable)."""
  try:
    coco = voc_to_coco(data_dir, split, instance_masks)
  except FileNotFoundError as e:
    print(f"error: {e}", file=stream)
    return 2
  except InstanceMaskError as e:
    print(f"error: {e}", file=stream)
    return 1
  return create_coco_tfrecord.convert_dataset(
      coco, data_dir, output_file_prefix, num_shards, include_masks=instance_masks,
      repairs=repairs, with_difficult=True, stream=stream, **kwargs)


def main(argv) -> None:
  del argv
  sys.exit(convert_voc(
      FLAGS.data_dir, FLAGS.split, FLAGS.output_file_prefix, FLAGS.num_shards,
      validate_dataset.repairs_from_flags(), instance_masks=FLAGS.instance_masks,
      max_instances=FLAGS.max_instances,
      apply_exif=not FLAGS.ignore_exif_orientation, box_tolerance=FLAGS.box_tolerance,
      workers=FLAGS.num_workers, output_annotations_file=FLAGS.output_annotations_file))


if __name__ == "__main__":
  define_flags()
  app.run(main)
