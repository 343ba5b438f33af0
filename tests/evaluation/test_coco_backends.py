"""faster-coco-eval gives pycocotools' numbers: all 12 and per-class AP, within 1e-4."""
import json

import gin
import numpy as np
import pytest

from detlab.evaluation.coco_backends import BACKENDS, default_backend, resolve_backend
from detlab.evaluation.coco_evaluator import METRIC_NAMES, CocoEvaluator

pytest.importorskip("faster_coco_eval")

NUM_IMAGES, SIZE, MAX_DETECTIONS = 300, 400, 30
CATEGORIES = {1: "a", 2: "b", 3: "c", 5: "never seen"}  # 5: no ground truth -> -1


def _synthetic(seed: int = 0):
  """(COCO ground-truth dict, detections as eval batches): boxes from 3 px to 380 px (small,
  medium and large), 10 % crowd, detections = jittered boxes (some of the wrong class),
  misses and false positives, scores tied now and then."""
  rng = np.random.default_rng(seed)
  images, annotations, batches = [], [], []
  for image_id in range(1, NUM_IMAGES + 1):
    images.append({"id": image_id, "height": SIZE, "width": SIZE})
    dets = []
    for _ in range(rng.integers(0, 9)):
      w, h = np.exp(rng.uniform(np.log(3), np.log(380), 2))
      x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
      category = int(rng.choice([1, 2, 3]))
      crowd = int(rng.random() < 0.1)
      annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": category, "bbox": [x, y, w, h],
                          "area": float(w * h * rng.uniform(0.6, 1.0)), "iscrowd": crowd})
      if rng.random() < 0.8:  # found, jittered by up to 15 % of its size
        jitter = rng.normal(0, 0.07, 4) * [w, h, w, h]
        wrong = rng.random() < 0.1
        dets.append(([y + jitter[1], x + jitter[0], y + h + jitter[3], x + w + jitter[2]],
                     (category % 3 + 1) if wrong else category))
    for _ in range(rng.integers(0, 6)):  # false positives
      x1, y1 = rng.uniform(0, SIZE - 10, 2)
      dets.append(([y1, x1, y1 + rng.uniform(2, 150), x1 + rng.uniform(2, 150)],
                   int(rng.choice([1, 2, 3]))))
    boxes = np.zeros((1, MAX_DETECTIONS, 4), np.float32)
    scores = np.zeros((1, MAX_DETECTIONS), np.float32)
    classes = np.zeros((1, MAX_DETECTIONS), np.int32)
    for k, (box, category) in enumerate(dets[:MAX_DETECTIONS]):
      boxes[0, k], classes[0, k] = box, category - 1
      scores[0, k] = round(rng.uniform(0.05, 1.0), 2)  # rounded: ties happen
    batches.append(({"boxes": boxes, "scores": scores, "classes": classes,
                     "num_detections": np.array([min(len(dets), MAX_DETECTIONS)])},
                    {"source_ids": np.array([str(image_id).encode()])}))
  coco = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": n} for i, n in CATEGORIES.items()]}
  return coco, batches


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  coco, batches = _synthetic()
  path = tmp_path_factory.mktemp("gt") / "instances.json"
  path.write_text(json.dumps(coco))
  out = {}
  for backend in BACKENDS:
    evaluator = CocoEvaluator(CATEGORIES, annotation_file=str(path), backend=backend)
    for detections, groundtruth in batches:
      evaluator.add_batch(detections, groundtruth)
    out[backend] = evaluator.evaluate()
  return out


def test_faster_backend_equals_pycocotools_on_all_twelve_numbers(results):
  faster, reference = results["faster"][0], results["pycocotools"][0]
  assert tuple(faster) == METRIC_NAMES
  for name in METRIC_NAMES:
    assert faster[name] == pytest.approx(reference[name], abs=1e-4), name
  # Not a degenerate case: every area range has ground truth and AP is neither 0 nor 1.
  assert all(reference[n] > 0 for n in ("APs", "APm", "APl")) and 0.1 < reference["AP"] < 0.9


def test_faster_backend_equals_pycocotools_per_class(results):
  faster, reference = results["faster"][1], results["pycocotools"][1]
  assert set(faster) == set(reference) == set(CATEGORIES.values())
  for name, value in reference.items():
    assert faster[name] == pytest.approx(value, abs=1e-4), name
  assert reference["never seen"] == -1.0


def test_backend_is_bound_in_gin_and_checked():
  assert default_backend() == "faster"  # installed (setup.py requires it)
  with gin.unlock_config():
    gin.parse_config("CocoEvaluator.backend = 'pycocotools'")
  try:
    assert CocoEvaluator({1: "a"}).backend == "pycocotools"
  finally:
    gin.clear_config()
  assert CocoEvaluator({1: "a"}).backend == "faster"
  with pytest.raises(ValueError, match="must be one of"):
    resolve_backend("fast")
