"""inspect_dataset renders records with their boxes; `python -m data_tools.create_coco_tfrecord`."""
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from data_tools import inspect_dataset


def test_inspect_renders_boxes_to_png(converted, tmp_path):
  log = io.StringIO()
  paths = inspect_dataset.inspect(converted["pattern"], str(tmp_path / "png"), num_records=3,
                                  min_size=128, stream=log)
  assert len(paths) == 3 and "Rendered 3 records" in log.getvalue()
  green = 0
  for path in paths:
    image = np.asarray(Image.open(path).convert("RGB"))
    assert max(image.shape[:2]) >= 128
    green += int(np.all(image == (0, 255, 0), axis=-1).sum())
  assert green > 50  # the ground-truth boxes are drawn


def test_python_m_create_coco_tfrecord(coco_fixture, tmp_path):
  """The converter's one subprocess run (TensorFlow start-up: ~8 s)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run(
      [sys.executable, "-m", "data_tools.create_coco_tfrecord",
       f"--image_dir={coco_fixture['image_dir']}",
       f"--object_annotations_file={coco_fixture['json']}",
       f"--output_file_prefix={tmp_path / 'val'}", "--num_shards=3", "--include_masks",
       "--repair", "--max_instances=4"],
      cwd=root, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Wrote 7 images" in result.stdout and "[convert] 7/7 images" in result.stderr
  assert sorted(os.listdir(tmp_path)) == [
      "annotations_val.json", "label_map.json", "val-00000-of-00003.tfrecord",
      "val-00001-of-00003.tfrecord", "val-00002-of-00003.tfrecord"]
