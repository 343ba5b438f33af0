"""convert_automl_checkpoint on the google/automl D0 oracle: the detlab model_dir it writes
gives the reference's outputs through api.load_detector (EMA and raw), evaluates with
--mode=eval, and fine-tunes to other classes via train.init_checkpoint (as does the automl
directory itself); a checkpoint of another Dk is refused naming the Dk it holds."""
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from data_tools.convert_automl_checkpoint import convert
from detlab import api, config
from detlab.data.tf_example import decode_example
from detlab.evaluation.coco_evaluator import CocoEvaluator
from detlab.training.initialize import initialize_from_checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights"))
from reference_fixture import automl_d0_dir  # noqa: E402  pylint: disable=wrong-import-position

D0_256 = ["IMAGE_SIZE = 256"]


def _max_diff(model, outputs, kind) -> float:
  class_outputs, box_outputs = model(outputs["images"], training=False)
  return max(max(float(np.abs(class_outputs[str(l)] - outputs[f"{kind}_class_{l}"]).max()),
                 float(np.abs(box_outputs[str(l)] - outputs[f"{kind}_box_{l}"]).max()))
             for l in range(3, 8))


@pytest.fixture(scope="module")
def oracle():
  path = automl_d0_dir()
  return path, np.load(os.path.join(path, "reference_outputs.npz"))


@pytest.mark.parametrize("use_ema", [True, False])
def test_converted_model_dir_gives_the_reference_outputs(oracle, tmp_path, use_ema):
  path, outputs = oracle
  summary = convert(path, ["efficientdet_d0.gin"], D0_256, str(tmp_path), use_ema=use_ema)
  print("conversion:", json.dumps(summary))
  assert summary["variables"] == summary["variables_with_automl_ema"]
  assert json.loads((tmp_path / "conversion.json").read_text())["seconds"] > 0
  ema = api.load_detector(["efficientdet_d0.gin"], D0_256, checkpoint=str(tmp_path))
  assert _max_diff(ema, outputs, "ema") <= 1e-4  # the detlab EMA holds the automl shadows
  raw = api.load_detector(["efficientdet_d0.gin"], D0_256, checkpoint=str(tmp_path),
                          use_ema=False)
  assert _max_diff(raw, outputs, "ema" if use_ema else "raw") <= 1e-4


def own_detections_as_annotations(model_dir: str, records: str, path: str) -> float:
  """Writes a COCO instances JSON whose boxes are the converted model's own detections on the
  records' images (detlab.api.detect, one image at a time): those at least 2 px high and wide
  scoring at least a threshold at or below the (3 x images)-th best such score, placed in the
  widest gap between consecutive scores down to the (6 x images)-th: --mode=eval runs the
  images batched, whose float differences (~1e-5) reorder scores tied within them, and a
  detection just below a threshold inside such a tie (a false positive here) could overtake
  one just above it. Returns the AP of all of api.detect's detections against it, computed
  here (1.0 by construction: every other detection scores below the threshold, and post-
  processing drops the zero-area boxes this COCO model puts in the pad and beyond the
  image); --mode=eval must find the same AP."""
  model = api.load_detector(["efficientdet_d0.gin"], D0_256, checkpoint=model_dir)
  files = sorted(tf.io.gfile.glob(records))
  examples = [decode_example(r) for r in tf.data.TFRecordDataset(files)]
  found = [api.detect(model, [e["image"].numpy()]) for e in examples]
  sized = [(f["boxes"][0, :, 2] - f["boxes"][0, :, 0] >= 2) &
           (f["boxes"][0, :, 3] - f["boxes"][0, :, 1] >= 2) & (f["classes"][0] > 0)
           for f in found]
  scores = np.sort(np.concatenate([f["scores"][0][k] for f, k in zip(found, sized)]))[::-1]
  first, last = min(3 * len(examples), len(scores)) - 1, min(6 * len(examples), len(scores)) - 1
  gaps = scores[first:last] - scores[first + 1:last + 1]
  threshold = scores[first + int(np.argmax(gaps))]
  print(f"pseudo ground truth threshold {threshold:.5f}, gap below it {gaps.max():.5f}")
  assert gaps.max() > 1e-3  # far beyond batched-vs-single float differences
  images, annotations = [], []
  for example, detections, keep in zip(examples, found, sized):
    image_id = int(example["source_id"].numpy())
    height, width = int(example["height"]), int(example["width"])
    images.append({"id": image_id, "height": height, "width": width})
    keep = keep & (detections["scores"][0] >= threshold)
    for (y1, x1, y2, x2), category in zip(detections["boxes"][0][keep].tolist(),
                                          detections["classes"][0][keep]):
      annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": int(category), "bbox": [x1, y1, x2 - x1, y2 - y1],
                          "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": str(i)} for i in range(1, 91)]}, f)
  assert len(annotations) >= 3 * len(examples)
  evaluator = CocoEvaluator({i: str(i) for i in range(1, 91)}, path)
  for image, detections in zip(images, found):
    evaluator.add_batch({**detections, "classes": detections["classes"] - 1},
                        {"source_ids": [str(image["id"])]})
  return evaluator.evaluate()[0]["AP"]


@pytest.mark.slow
def test_eval_and_fine_tuning_start_from_it(oracle, tmp_path, shapes_dir):
  path, _ = oracle
  out = str(tmp_path / "converted")
  convert(path, ["efficientdet_d0.gin"], D0_256, out)
  # Ground truth: the converted model's own best detections, found independently of the
  # training root's eval loop (the shapes boxes would give the COCO model an AP of ~0).
  annotations = str(tmp_path / "own_detections.json")
  expected_ap = own_detections_as_annotations(out, f"{shapes_dir}/val-*", annotations)
  print("AP of api.detect against the pseudo ground truth:", expected_ap)
  from detlab.training.experiment import train  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  config.parse_gin(["efficientdet_d0_shapes.gin"], D0_256 + [
      "NUM_CLASSES = 90", f"EVAL_FILE_PATTERN = '{shapes_dir}/val-*'",
      f"train.annotation_file = '{annotations}'",
      f"train.label_map_file = '{shapes_dir}/label_map.json'", "train.num_eval_images = 8"])
  try:
    keras.backend.clear_session()
    results = train(out, "eval")
  finally:
    gin.clear_config()
  print("--mode=eval:", results["metrics"])
  # Measured before post-processing dropped zero-area boxes: AP 0.383 against 0.385 here,
  # both far below 1 as those boxes, scored up to 1.0, ranked first as false positives. Then
  # 0.979 against 1.0 until NMS ranked the pairs whose sigmoid saturates at exactly 1.0 by
  # their logits (postprocess.top_k_pairs, sorted): their order had followed the unsorted
  # top-k and changed with batched-vs-single float noise, and soft-NMS decayed other boxes.
  # Now 1.0 against 1.0 (one image's 34 detections agree to 1e-4 in score).
  assert results["metrics"]["AR100"] >= 0.99, results["metrics"]
  assert results["metrics"]["AP"] == pytest.approx(expected_ap, abs=0.01)
  # Fine-tuning to 4 classes, from the converted dir and from the automl bundle directly.
  for source in (out, path):
    model = api.load_detector(["efficientdet_d0.gin"], ["IMAGE_SIZE = 128", "NUM_CLASSES = 4"])
    table = initialize_from_checkpoint(model, source, "detector")
    assert table["class_net"]["skipped"] == 2  # class-predict pointwise kernel + bias
    assert table["backbone"]["new"] == table["fpn"]["new"] == table["box_net"]["new"] == 0
    assert table["backbone"]["skipped"] == table["box_net"]["skipped"] == 0


def test_a_checkpoint_of_another_dk_is_refused_naming_it(oracle, tmp_path):
  path, _ = oracle
  result = subprocess.run(
      [sys.executable, "-m", "data_tools.convert_automl_checkpoint", f"--checkpoint={path}",
       "--gin_file=efficientdet_d1.gin", "--gin_bindings=IMAGE_SIZE = 128",
       f"--model_dir={tmp_path / 'out'}"], capture_output=True, text=True, check=False,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert result.returncode == 1, result.stderr[-2000:]
  assert "looks like EfficientDet-D0" in result.stderr
  assert "--gin_file=efficientdet_d0.gin" in result.stderr
