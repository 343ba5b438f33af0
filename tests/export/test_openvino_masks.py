"""Box and mask AP parity of the formats that serve masks (exporter.MASK_FORMATS), opt-in
and slow: a trained instance model's every mask format keeps its box AP and mask AP within
test_parity's bounds against the validation annotations (pycocotools bbox and segm on each
runner's masks, pasted in original pixels). The FP32 mask equality of each format with the
SavedModel on a tiny model is in test_instance_serving."""
import os

import pytest
import tensorflow as tf

from detlab import infer
from detlab.data.tf_example import decode_example
from detlab.export import exporter, runners
from test_parity import BOUNDS  # pylint: disable=import-error


def box_and_mask_ap(runner, images: list, image_ids: list, annotation_file: str) -> dict:
  """{"bbox": AP, "segm": AP} of a runner's detections (all rows, pasted masks as RLE)."""
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  rows = []
  for image, image_id in zip(images, image_ids):
    rows += infer.coco_results(image_id, runner([image]), 0, 0.0)
  truth, ap = COCO(annotation_file), {}
  for kind in ("bbox", "segm"):
    results = [r if kind == "segm" else {k: v for k, v in r.items() if k != "segmentation"}
               for r in rows]
    evaluation = COCOeval(truth, truth.loadRes(results), kind)
    evaluation.params.imgIds = image_ids
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ap[kind] = evaluation.stats[0]
  return ap


@pytest.mark.slow
def test_mask_formats_keep_a_trained_models_box_and_mask_ap(shapes_dir, tmp_path):
  """Each format of exporter.MASK_FORMATS exported from DETLAB_PARITY_MASK_MODEL_DIR (an
  instance_segmentation_d0_shapes.gin model_dir), on DETLAB_PARITY_EVAL_PATTERN's images
  (default the fixture's 8) against the COCO annotations beside them: box and mask AP within
  BOUNDS of the TF model's (its model_dir through detlab.api)."""
  model_dir = os.environ.get("DETLAB_PARITY_MASK_MODEL_DIR")
  if not model_dir:
    pytest.skip("needs a trained instance model_dir in DETLAB_PARITY_MASK_MODEL_DIR "
                "(python -m detlab.train --gin_file=instance_segmentation_d0_shapes.gin ...)")
  pattern = os.environ.get("DETLAB_PARITY_EVAL_PATTERN", f"{shapes_dir}/val-*.tfrecord")
  annotations = os.path.join(os.path.dirname(pattern), "val_annotations.json")
  out = str(tmp_path / "out")
  exporter.export(model_dir, out, exporter.MASK_FORMATS, calibration_file_pattern=pattern)
  examples = [decode_example(s) for s in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(
      pattern)))]
  images = [e["image"].numpy() for e in examples]
  ids = [int(e["source_id"].numpy()) for e in examples]
  reference = box_and_mask_ap(runners.load_runner(model_dir), images, ids, annotations)
  assert reference["segm"] > 0.1  # a trained model: far above a random one's ~0
  gaps = {}
  for name, path in runners.exported_formats(out).items():
    ap = box_and_mask_ap(runners.load_runner(path), images, ids, annotations)
    gaps[name] = {kind: ap[kind] - reference[kind] for kind in ap}
  print("box and mask AP of tf:", reference, "deltas per format:", gaps)  # the README table
  assert set(gaps) == set(exporter.MASK_FORMATS)
  for name, gap in gaps.items():
    assert abs(gap["bbox"]) <= BOUNDS[name] and abs(gap["segm"]) <= BOUNDS[name], (name, gap)

