"""Pascal VOC -> TFRecords: class ids 1..20, 1-based boxes, the difficult flag kept."""
import io
import json

import numpy as np
import tensorflow as tf
from PIL import Image

from data_tools import create_voc_tfrecord
from detlab.data.tf_example import decode_example, decode_extras

XML = """<annotation><filename>{name}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
OBJECT = """<object><name>{label}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""
# name -> (h, w, [(label, difficult, xmin, ymin, xmax, ymax)]), VOC 1-based inclusive pixels
IMAGES = {"2008_000001": (40, 48, [("dog", 0, 1, 1, 20, 30), ("person", 1, 25, 5, 48, 40)]),
          "2008_000002": (32, 32, [("tvmonitor", 0, 3, 4, 10, 12)])}


def _make_voc(root, images, split="train"):
  for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
    (root / sub).mkdir(parents=True)
  for name, (h, w, objects) in images.items():
    Image.new("RGB", (w, h), (90, 120, 150)).save(root / "JPEGImages" / f"{name}.jpg")
    xml = XML.format(name=name, w=w, h=h, objects="".join(
        OBJECT.format(label=l, difficult=d, x1=a, y1=b, x2=c, y2=e)
        for l, d, a, b, c, e in objects))
    (root / "Annotations" / f"{name}.xml").write_text(xml)
  (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(images) + "\n")


def test_voc_round_trip_with_difficult_flag(tmp_path):
  _make_voc(tmp_path / "VOC2012", IMAGES)
  log = io.StringIO()
  status = create_voc_tfrecord.convert_voc(str(tmp_path / "VOC2012"), "train",
                                           str(tmp_path / "out" / "train"), 2, stream=log)
  assert status == 0, log.getvalue()
  label_map = json.loads((tmp_path / "out" / "label_map.json").read_text())
  assert len(label_map) == 20 and label_map["12"] == "dog" and label_map["20"] == "tvmonitor"
  files = sorted(tf.io.gfile.glob(str(tmp_path / "out" / "train-*.tfrecord")))
  assert len(files) == 2
  seen = {}
  for record in tf.data.TFRecordDataset(files):
    data, extras = decode_example(record), decode_extras(record)
    seen[int(data["source_id"].numpy())] = (data, extras)
  assert set(seen) == {2008000001, 2008000002}
  data, extras = seen[2008000001]
  np.testing.assert_allclose(data["boxes"].numpy(), [[0, 0, 30, 20], [4, 24, 40, 48]],
                             atol=1e-3)
  np.testing.assert_array_equal(data["classes"].numpy(), [12, 15])
  np.testing.assert_array_equal(extras["difficult"].numpy(), [0, 1])
  assert extras["filename"].numpy() == b"JPEGImages/2008_000001.jpg"
  data, extras = seen[2008000002]
  np.testing.assert_array_equal(data["classes"].numpy(), [20])
  np.testing.assert_array_equal(extras["difficult"].numpy(), [0])


def test_voc_unknown_class_and_bad_xml_are_refused(tmp_path):
  images = {"a1": (32, 32, [("dragon", 0, 1, 1, 10, 10)]), "a2": (32, 32, [])}
  _make_voc(tmp_path / "VOC", images)
  (tmp_path / "VOC" / "Annotations" / "a2.xml").write_text("<annotation><size>")
  log = io.StringIO()
  status = create_voc_tfrecord.convert_voc(str(tmp_path / "VOC"), "train",
                                           str(tmp_path / "out" / "t"), 1, stream=log)
  assert status == 1
  assert "unknown_category" in log.getvalue() and "corrupt_image" in log.getvalue()
  assert create_voc_tfrecord.convert_voc(str(tmp_path / "VOC"), "val", "x", stream=log) == 2
  assert "ImageSets/Main/val.txt" in log.getvalue()
