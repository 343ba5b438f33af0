"""Instance segmentation evaluation (detlab/evaluation/instance_segmentation.py,
coco_evaluator.CocoEvaluator(masks=True)).

- perfect outputs: built-in shapes scenes written as records with masks, read by the
  detection eval input with instance masks, ground-truth boxes and their 28 x 28 mask crops
  (instance_masks.mask_targets) given as predictions -> box and mask AP >= 0.99, against the
  records' masks and against an annotation file, with both COCO backends;
- imperfect outputs: detlab's mask metrics equal pycocotools' COCOeval('segm') run here on
  the evaluator's own result rows and the same ground truth, for both backends;
- the paste puts box-relative cells where the box says; the picture draws masks.
"""
import contextlib
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlab.data import builtin_shapes
from detlab.data.detection_input import InputConfig, make_dataset
from detlab.data.instance_masks import InstanceMaskConfig, mask_targets
from detlab.data.tf_example import build_example, encode_png
from detlab.detection.anchors import AnchorConfig
from detlab.evaluation import visualize
from detlab.evaluation.coco_backends import BACKENDS, default_backend
from detlab.evaluation.coco_evaluator import (METRIC_NAMES, encode_mask, mask_rle,
                                              paste_mask)
from detlab.evaluation.instance_segmentation import (MASK_METRIC_NAMES,
                                                     InstanceSegmentationEvaluator)

SEED, NUM_IMAGES, MASK_SIZE = 11, 4, 28
CATEGORIES = builtin_shapes.CATEGORIES


def _backends():
  return [b for b in BACKENDS if b == "pycocotools" or default_backend() == "faster"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  """NUM_IMAGES shapes scenes as one TFRecord file with masks and as a COCO JSON (RLE)."""
  root = tmp_path_factory.mktemp("masks")
  images, annotations = [], []
  with tf.io.TFRecordWriter(str(root / "eval.tfrecord")) as writer:
    for index in range(NUM_IMAGES):
      scene = builtin_shapes.render_scene(SEED, index)
      height, width = scene["image"].shape[:2]
      writer.write(build_example(
          encoded_image=encode_png(scene["image"]), image_format="png",
          source_id=str(index + 1), height=height, width=width, boxes_yxyx=scene["boxes"],
          category_ids=scene["category_ids"],
          category_names=[CATEGORIES[int(c)] for c in scene["category_ids"]],
          areas=scene["areas"], masks=scene["masks"]).SerializeToString())
      images.append({"id": index + 1, "height": int(height), "width": int(width)})
      for box, cid, mask, area in zip(scene["boxes"], scene["category_ids"], scene["masks"],
                                      scene["areas"]):
        rle = mask_util.encode(np.asfortranarray(mask))
        y1, x1, y2, x2 = (float(v) for v in box)
        annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                            "category_id": int(cid), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": float(area), "iscrowd": 0,
                            "segmentation": dict(rle, counts=rle["counts"].decode())})
  coco = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": n} for i, n in CATEGORIES.items()]}
  (root / "instances.json").write_text(json.dumps(coco))
  config = InputConfig(file_pattern=str(root / "eval.tfrecord"),
                       instance_masks=InstanceMaskConfig(MASK_SIZE))
  anchors = AnchorConfig(image_size=128, min_level=3, max_level=5)
  batches = [{k: v.numpy() for k, v in batch.items()}
             for batch in make_dataset(config, anchors, len(CATEGORIES), 3)]
  return {"json": str(root / "instances.json"), "coco": coco, "batches": batches}


def _perfect_outputs(batch: dict) -> dict:
  """Ground-truth boxes (original pixels) and their mask crops as the predictions."""
  gt_masks, boxes = batch["gt_masks"], batch["gt_boxes"]
  size = gt_masks.shape[2:]
  masks = []
  for i in range(len(boxes)):
    count = gt_masks.shape[1]
    identity = tf.tile([[1.0, 1.0, 0.0, 0.0]], [count, 1])
    window = tf.tile([[0.0, 0.0, float(size[0]), float(size[1])]], [count, 1])
    masks.append(mask_targets(tf.constant(gt_masks[i]), identity, window,
                              tf.constant(boxes[i], tf.float32), MASK_SIZE).numpy())
  valid = batch["gt_classes"] >= 0
  return {"boxes": boxes, "scores": valid.astype(np.float32),
          "classes": np.maximum(batch["gt_classes"], 0), "num_detections": batch["gt_count"],
          "masks": np.asarray(masks)}


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("from_file", [False, True])
def test_perfect_outputs_give_mask_ap_of_one(shapes, backend, from_file, tmp_path):
  evaluator = InstanceSegmentationEvaluator(CATEGORIES, shapes["json"] if from_file else None,
                                            backend=backend)
  for batch in shapes["batches"]:
    evaluator.update(batch, _perfect_outputs(batch))
  metrics, extra = evaluator.result()
  assert metrics["AP"] >= 0.99 and metrics["mask_AP"] >= 0.99, metrics
  assert set(MASK_METRIC_NAMES) <= set(metrics) and set(METRIC_NAMES) <= set(metrics)
  present = {CATEGORIES[a["category_id"]] for a in shapes["coco"]["annotations"]}
  assert all(extra["per_class_mask_AP"][name] >= 0.99 for name in present), extra
  assert evaluator.draw(str(tmp_path / "masks.png")) and (tmp_path / "masks.png").stat().st_size


def _imperfect_outputs(batch: dict, rng: np.random.RandomState) -> dict:
  """The perfect outputs moved, rescored, some masks thinned, plus a false positive."""
  outputs = _perfect_outputs(batch)
  count = outputs["boxes"].shape[1]
  outputs["boxes"] = outputs["boxes"] + rng.uniform(-4, 4, outputs["boxes"].shape)
  outputs["scores"] = rng.uniform(0.05, 1.0, outputs["scores"].shape).astype(np.float32)
  outputs["masks"] = outputs["masks"] * (rng.uniform(size=outputs["masks"].shape) > 0.15)
  extra_box = np.array([[5.0, 5.0, 60.0, 70.0]] * len(outputs["boxes"]))[:, None]
  outputs["boxes"] = np.concatenate([outputs["boxes"], extra_box], 1)
  outputs["scores"] = np.concatenate([outputs["scores"], np.full([len(extra_box), 1], 0.5)], 1)
  outputs["classes"] = np.concatenate([outputs["classes"], np.ones([len(extra_box), 1])], 1)
  outputs["masks"] = np.concatenate([outputs["masks"],
                                     np.ones([len(extra_box), 1, MASK_SIZE, MASK_SIZE])], 1)
  # The extra row goes after the real ones of each image.
  for key in ("boxes", "scores", "classes", "masks"):
    values = outputs[key]
    for i, n in enumerate(batch["gt_count"]):
      order = list(range(n)) + [count] + list(range(n, count))
      values[i] = values[i][order]
  outputs["num_detections"] = batch["gt_count"] + 1
  return outputs


@pytest.mark.parametrize("backend", _backends())
def test_mask_metrics_equal_pycocotools_on_the_same_results(shapes, backend):
  evaluator = InstanceSegmentationEvaluator(CATEGORIES, shapes["json"], backend=backend)
  rng = np.random.RandomState(3)
  for batch in shapes["batches"]:
    evaluator.update(batch, _imperfect_outputs(batch, rng))
  metrics, _ = evaluator.result()
  rows = evaluator.coco.mask_results
  assert all(set(row) == {"image_id", "category_id", "score", "segmentation"} for row in rows)
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(shapes["json"])
    reference = COCOeval(gt, gt.loadRes(json.loads(json.dumps(rows))), "segm")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
  assert 0.2 < metrics["mask_AP"] < 0.95  # the check compares a value that can move
  np.testing.assert_allclose([metrics[n] for n in MASK_METRIC_NAMES], reference.stats[:12],
                             atol=1e-9)
  assert metrics["mask_AP"] != metrics["AP"]


def test_paste_puts_cells_where_the_box_says():
  half = np.zeros([MASK_SIZE, MASK_SIZE], np.float32)
  half[:, :MASK_SIZE // 2] = 1.0  # the box's left half
  pasted = paste_mask(half, np.array([10.0, 20.0, 30.0, 48.0]), 40, 60)
  expected = np.zeros([40, 60], np.uint8)
  expected[10:30, 20:34] = 1
  np.testing.assert_array_equal(pasted, expected)


def test_the_rle_of_the_box_region_equals_pycocotools_encode_of_the_whole_mask():
  rng = np.random.RandomState(5)
  cases = [(np.array([0.0, 0.0, 20.0, 30.0]), 20, 30),   # the whole image: runs join columns
           (np.array([-5.0, 25.0, 20.0, 40.0]), 20, 30),  # cut at the top and the right
           (np.array([3.2, 4.7, 3.9, 5.1]), 20, 30),      # under a pixel
           (np.array([25.0, 2.0, 30.0, 9.0]), 20, 30)]    # wholly below the image
  cases += [(np.sort(rng.uniform(-10, 50, 4).reshape(2, 2), 0).T.reshape(4)[[0, 2, 1, 3]],
             40, 45) for _ in range(40)]
  for box, height, width in cases:
    mask = (rng.uniform(size=(MASK_SIZE, MASK_SIZE)) > rng.uniform(0.2, 0.8)).astype(np.float32)
    assert mask_rle(mask, box, height, width) == encode_mask(
        paste_mask(mask, box, height, width)), box


def test_without_masks_in_batch_or_file_the_fix_is_named():
  evaluator = InstanceSegmentationEvaluator(CATEGORIES)
  batch = {"source_ids": np.array([b"1"]), "image_info": np.array([[[8, 8], [8, 8], [1, 1],
                                                                    [0, 0]]], np.float32)}
  outputs = {"boxes": np.zeros([1, 0, 4]), "scores": np.zeros([1, 0]),
             "classes": np.zeros([1, 0]), "num_detections": np.array([0]),
             "masks": np.zeros([1, 0, 4, 4])}
  with pytest.raises(ValueError, match="eval_masks=True"):
    evaluator.update(batch, outputs)


def test_mask_overlay_fills_predictions_and_outlines_ground_truth():
  image = np.full([12, 12, 3], 100, np.uint8)
  truth = np.zeros([12, 12], np.uint8)
  truth[2:9, 2:9] = 1
  predicted = np.zeros([12, 12], np.uint8)
  predicted[4:6, 4:6] = 1
  out = visualize.mask_overlay(image, [truth], [predicted], [0])
  colour = visualize.palette(2)[1].astype(np.float32)
  np.testing.assert_array_equal(out[4, 4], np.round(0.55 * 100 + 0.45 * colour))
  np.testing.assert_array_equal(out[2, 5], visualize.GROUND_TRUTH)  # the outline
  np.testing.assert_array_equal(out[7, 7], [100, 100, 100])  # inside, not on the outline
  np.testing.assert_array_equal(out[10, 10], [100, 100, 100])
