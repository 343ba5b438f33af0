"""Data tools read and write through tf.io.gfile: ram:// (TF's in-memory file system, where
builtin open, os.makedirs and PIL cannot reach) stands for gs:// and other remote paths."""
import io
import json

import numpy as np
from PIL import Image
import tensorflow as tf

from data_tools import create_coco_tfrecord, make_shapes_dataset, validate_dataset
from detlab.data.tf_example import decode_example


def _read_json(path):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def test_shapes_data_set_is_written_to_ram():
  root = "ram://detlab_tools/shapes"
  make_shapes_dataset.make_dataset(root, num_train=2, num_val=2, num_shards=1, workers=1)
  assert _read_json(f"{root}/label_map.json")["1"]
  assert len(_read_json(f"{root}/val_annotations.json")["images"]) == 2
  records = list(tf.data.TFRecordDataset(tf.io.gfile.glob(f"{root}/train-*")))
  assert len(records) == 2


def test_coco_converter_reads_and_writes_ram_paths():
  root = "ram://detlab_tools/coco"
  tf.io.gfile.makedirs(f"{root}/images")
  buffer = io.BytesIO()
  Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(buffer, format="PNG")
  with tf.io.gfile.GFile(f"{root}/images/a.png", "wb") as f:
    f.write(buffer.getvalue())
  coco = {"images": [{"id": 3, "file_name": "a.png", "height": 24, "width": 32}],
          "annotations": [{"id": 1, "image_id": 3, "category_id": 2, "bbox": [2, 2, 10, 8],
                           "area": 80, "iscrowd": 0}],
          "categories": [{"id": 2, "name": "two"}]}
  with tf.io.gfile.GFile(f"{root}/train.json", "w") as f:
    f.write(json.dumps(coco))
  log = io.StringIO()
  assert validate_dataset.validate(f"{root}/images", f"{root}/train.json", stream=log,
                                   output_annotations_file=f"{root}/checked.json") == 0
  assert _read_json(f"{root}/checked.json")["annotations"][0]["id"] == 1
  status = create_coco_tfrecord.convert(f"{root}/images", f"{root}/train.json",
                                        f"{root}/out/train", num_shards=1, stream=log)
  assert status == 0, log.getvalue()
  assert _read_json(f"{root}/out/label_map.json") == {"2": "two"}
  (record,) = tf.data.TFRecordDataset(f"{root}/out/train-00000-of-00001.tfrecord")
  example = decode_example(record)
  assert int(example["source_id"].numpy()) == 3 and example["classes"].numpy().tolist() == [2]
