"""Instance mask sources: VOC SegmentationObject PNGs through create_voc_tfrecord
--instance_masks, and every broken COCO segmentation named before anything is written."""
import io
import json

import numpy as np
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_util

from data_tools import create_coco_tfrecord, create_voc_tfrecord
from detlab.data import dataset_checks
from detlab.data.tf_example import decode_example, decode_extras

XML = """<annotation><filename>{name}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
OBJECT = """<object><name>{label}</name><difficult>0</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def _palette_png(path, indices: np.ndarray) -> None:
  picture = Image.fromarray(indices.astype(np.uint8), mode="P")
  picture.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
  picture.save(path)


def _voc(root, images: dict) -> None:
  """images: name -> (indices [h, w] or None (no PNG), [(label, xmin, ymin, xmax, ymax)])."""
  for sub in ("Annotations", "JPEGImages", "ImageSets/Segmentation", "SegmentationObject"):
    (root / sub).mkdir(parents=True, exist_ok=True)
  for name, (indices, objects) in images.items():
    h, w = (30, 40) if indices is None else indices.shape
    Image.new("RGB", (w, h), (90, 120, 150)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "Annotations" / f"{name}.xml").write_text(XML.format(
        name=name, w=w, h=h, objects="".join(
            OBJECT.format(label=l, x1=a, y1=b, x2=c, y2=d) for l, a, b, c, d in objects)))
    if indices is not None:
      _palette_png(root / "SegmentationObject" / f"{name}.png", indices)
  (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(images) + "\n")


def _instances(h=30, w=40) -> np.ndarray:
  """Two instances with VOC's void border (255) around the first; a third object has none."""
  indices = np.zeros([h, w], np.uint8)
  indices[2:12, 3:20] = 255
  indices[3:11, 4:19] = 1
  indices[14:28, 22:30] = 2
  indices[20:28, 30:38] = 2  # an L: not its box
  return indices


def test_voc_segmentation_object_pngs_become_instance_masks(tmp_path):
  objects = [("dog", 4, 3, 19, 11), ("cat", 23, 15, 38, 28), ("person", 1, 1, 5, 5)]
  _voc(tmp_path / "VOC2012", {"2008_000001": (_instances(), objects)})
  log = io.StringIO()
  status = create_voc_tfrecord.convert_voc(str(tmp_path / "VOC2012"), "val",
                                           str(tmp_path / "out" / "val"), 1, stream=log,
                                           instance_masks=True)
  assert status == 0, log.getvalue()
  assert "1 masks filled from the box" in log.getvalue()
  record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "val-00000-of-00001.tfrecord"))))
  masks = decode_extras(record)["masks"].numpy()
  indices = _instances()
  np.testing.assert_array_equal(masks[0], indices == 1)  # the void border is no instance's
  np.testing.assert_array_equal(masks[1], indices == 2)
  box_mask = np.zeros([30, 40], np.uint8)
  box_mask[0:5, 0:5] = 1  # 1-based inclusive (1, 1)-(5, 5) -> pixels 0..4
  np.testing.assert_array_equal(masks[2], box_mask)
  areas = decode_example(record)["areas"].numpy()
  np.testing.assert_allclose(areas[:2], [(indices == 1).sum(), (indices == 2).sum()])


def test_voc_instance_png_problems_are_named(tmp_path):
  small = _instances()[:20]
  too_many = _instances()
  too_many[0, 0] = 3
  _voc(tmp_path / "VOC2012", {
      "a1": (small, [("dog", 4, 3, 19, 11), ("cat", 23, 15, 38, 20)]),
      "a2": (too_many, [("dog", 4, 3, 19, 11), ("cat", 23, 15, 38, 28)]),
      "a3": (None, [("dog", 4, 3, 19, 11)])})
  (tmp_path / "VOC2012/Annotations/a1.xml").write_text(XML.format(
      name="a1", w=40, h=30, objects=OBJECT.format(label="dog", x1=4, y1=3, x2=19, y2=11)))
  log = io.StringIO()
  status = create_voc_tfrecord.convert_voc(str(tmp_path / "VOC2012"), "val",
                                           str(tmp_path / "out" / "val"), 1, stream=log,
                                           instance_masks=True)
  text = log.getvalue()
  assert status == 1 and not (tmp_path / "out").exists(), text
  assert "SegmentationObject/a1.png: 40 x 20 (w x h), the image is 40 x 30" in text
  assert "SegmentationObject/a2.png: instance index(es) [3] but the XML has 2" in text
  assert "SegmentationObject/a3.png" in text and "missing or unreadable" in text


def test_every_broken_coco_segmentation_is_named_and_nothing_written(tmp_path):
  height, width = 20, 30
  mask = np.zeros([height, width], np.uint8)
  mask[2:8, 3:9] = 1
  wrong_size = mask_util.encode(np.asfortranarray(np.zeros([10, 30], np.uint8)))
  wrong_size["counts"] = wrong_size["counts"].decode()
  box = [3, 2, 6, 6]
  broken = {
      1: [[3, 2, 9, 2]],                                    # 2 points
      2: wrong_size,                                        # compressed RLE, size 10 x 30
      3: {"size": [height, width], "counts": [5, 10]},      # covers 15 pixels, not 600
      4: [[40, 2, 50, 2, 50, 8]],                           # wholly right of the image
      5: [[3, 2, 6, 5, 9, 8]],                              # three collinear points
      6: {"size": [height, width], "counts": [10, -4, 594]},  # not run lengths
  }
  anns = [{"id": aid, "image_id": 1, "category_id": 1, "bbox": box, "area": 36.0,
           "iscrowd": 0, "segmentation": seg} for aid, seg in broken.items()]
  (tmp_path / "img").mkdir()
  Image.new("RGB", (width, height)).save(tmp_path / "img" / "a.png")
  (tmp_path / "c.json").write_text(json.dumps({
      "images": [{"id": 1, "file_name": "a.png", "height": height, "width": width}],
      "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
  log = io.StringIO()
  status = create_coco_tfrecord.convert(str(tmp_path / "img"), str(tmp_path / "c.json"),
                                        str(tmp_path / "out" / "t"), num_shards=1,
                                        include_masks=True, stream=log)
  assert status == 1 and not (tmp_path / "out").exists(), log.getvalue()
  assert "bad_segmentation  error     6" in log.getvalue()
  report = dataset_checks.validate_coco(json.loads((tmp_path / "c.json").read_text()),
                                        str(tmp_path / "img"), check_masks=True)
  text = "\n".join(p.message for p in report.errors)
  for expected in ("annotation 1: a polygon needs an even number (>= 6)",
                   "annotation 2: RLE size [10, 30] != image [height, width] [20, 30]",
                   "annotation 3: uncompressed RLE counts cover 15 pixels",
                   "annotation 4: the polygons (x 40..50, y 2..8) lie outside the image",
                   "annotation 5: the polygons enclose no area",
                   "annotation 6: uncompressed RLE counts must be run lengths"):
    assert expected in text, (expected, text)
