"""Runs COCO box or mask evaluation with one of two implementations of the same protocol.

'pycocotools' is the reference (COCOeval of the COCO API); 'faster' is faster-coco-eval's
COCOeval_faster, a C++ port of the same matching and accumulation that gives the same 12
numbers and per-class precision (tests/evaluation/test_coco_backends.py asserts it against
pycocotools) in a fraction of the time. 'faster' is the default when it is installed.
"""
import contextlib
import dataclasses
import importlib.util
import io

import numpy as np

BACKENDS = ("faster", "pycocotools")


def default_backend() -> str:
  return "faster" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def resolve_backend(backend: str | None) -> str:
  """None -> the default; checks the name and that the package is importable."""
  backend = backend or default_backend()
  if backend not in BACKENDS:
    raise ValueError(f"COCO backend must be one of {BACKENDS}, got {backend!r}.")
  if backend == "faster" and not importlib.util.find_spec("faster_coco_eval"):
    raise ImportError("COCO backend 'faster' needs faster-coco-eval: `pip install "
                      "faster-coco-eval`, or use CocoEvaluator.backend = 'pycocotools'.")
  return backend


@dataclasses.dataclass
class CocoEvalResult:
  stats: np.ndarray         # [12] the COCO summary numbers, in METRIC_NAMES order
  precision: np.ndarray     # [IoU thresholds, recall points, categories, area ranges, max dets]
  category_ids: list[int]   # the categories axis of `precision`
  summary: str              # COCOeval's printed table


def _api(backend: str):
  if backend == "faster":
    from faster_coco_eval import COCO, COCOeval_faster  # pylint: disable=import-outside-toplevel
    return COCO, COCOeval_faster
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  return COCO, COCOeval


def run_cocoeval(groundtruth: dict, detections: list[dict], image_ids: list[int],
                 backend: str = "pycocotools", iou_type: str = "bbox") -> CocoEvalResult:
  """groundtruth: a COCO instances dict; detections: COCO result rows ([x, y, w, h] "bbox"
  for iou_type 'bbox'; RLE "segmentation" only, for 'segm', so loadRes takes each row's
  area from its mask as COCO's own results do); only `image_ids` are evaluated (as the
  reference does: images outside the evaluated set would count their ground truth as
  missed). `detections` must not be empty (COCO's loadRes cannot take an empty list)."""
  if iou_type not in ("bbox", "segm"):
    raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}.")
  coco_cls, eval_cls = _api(backend)
  with contextlib.redirect_stdout(io.StringIO()) as log:
    gt = coco_cls()
    gt.dataset = groundtruth
    gt.createIndex()
    # loadRes adds fields to the rows it is given: give it copies.
    dt = gt.loadRes([dict(d) for d in detections])
    coco_eval = eval_cls(gt, dt, iouType=iou_type)
    coco_eval.params.imgIds = sorted(image_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
  return CocoEvalResult(np.asarray(coco_eval.stats[:12], np.float64),
                        np.asarray(coco_eval.eval["precision"]),
                        list(coco_eval.params.catIds), log.getvalue())
