"""Detection learning gate: a real `python -m detlab.train` run on the built-in shapes data
must learn to detect (AP50 floor), and the model_dir it writes must survive
`python -m detlab.export` and `python -m detlab.infer` with its AP50 intact.

The run: the tests' tiny backbone (tests/training/tiny_backbone.py) under
efficientdet_d0_shapes.gin at 128 px, BiFPN width 32 x 2 cells, heads 2 deep, 400 Adam steps
of batch 8 (lr 0.064 per 64 images) on 480 shapes images, evaluated on 48 val images; about
75 s of one CPU thread. D0 spends about that on building and tracing before its first step
(its 20-step run measured AP50 0.003), so it is left to tests/e2e/test_train_cli.py.

AP50 (metrics.json, EMA weights at step 400) measured with
  TF_NUM_INTRAOP_THREADS=1 python -m detlab.train <the bindings below> train.seed=S
on the data set written by make_dataset(seed=D):
  D=0: S=1 0.158, S=2 0.153, S=3 0.176;  D=7: S=1 0.178
(measured after the focal loss became one compiled pass; the code just before it gave 0.158,
0.165, 0.179; 0.172: a change of float rounding moves a seed by up to ~0.02 either way, and
the same seed repeats its figure to 1e-6 on one machine). The floor is the worst of them
(0.153) minus a margin of 0.02: 0.133, 0.025 below this gate's own seeds (S=1, D=0). Broken
builds fall below it: with category ids offset by one in the anchor targets
(detlab/detection/targets.py) the gate measured 0.113 (0.106 with the compiled focal loss;
ellipses never learnt, the other classes learnt under their neighbour's name: this tiny model
tells the classes apart only partly, so localisation alone keeps AP50 off 0); a barely
trained model scores ~0 (D0 after 20 steps: 0.003). The margin is small because that gap is:
a wider one would let the class-id break through. So every class must also reach AP
(0.5:0.95) 0.002: the worst class of any seed above scored 0.007 (D=7; 0.0066 before the loss
change; the gate's own seed: 0.025 at worst), the class-id break gives ellipse AP 0.000.

Serving (item 4 of issue 21): the model_dir is exported to a SavedModel and INT8 LiteRT
(calibrated on 16 train images) through the CLI, and each format, like the model_dir
itself, serves the val images (PNG files named by their COCO image ids) through
`python -m detlab.infer --score_threshold=0`; COCOeval (pycocotools) scores each
detections.json against val_annotations.json. infer and training's evaluation share the
eval parser (aspect-preserving resize, bottom/right pad), post-processing and EMA weights,
and the PNGs hold the records' decoded pixels, so the model_dir's AP50 through infer may
differ from metrics.json's only by infer's rounding (boxes to 1e-3 px, scores to 1e-5) and
its score cut (0 vs the evaluator's 0.001).
"""
import json
import os

from PIL import Image
import pytest
import tensorflow as tf

from detlab.data.tf_example import decode_example

import e2e_cli  # pylint: disable=import-error  (tests/e2e/e2e_cli.py)

DATA_SEED, TRAIN_SEED = 0, 1
NUM_TRAIN, NUM_VAL = 480, 48
AP50_FLOOR = 0.133  # worst seed 0.153 - margin 0.02 (module doc)
CLASS_AP_FLOOR = 0.002  # every class: the worst class of any seed 0.007 - margin 0.005
TRAIN_BINDINGS = [
    "import tests.training.tiny_backbone", "efficientdet.backbone_fn = @tiny_test_backbone",
    "IMAGE_SIZE = 128", "efficientdet.fpn_width = 32", "efficientdet.fpn_cells = 2",
    "efficientdet.head_repeats = 2", "Schedule.batch_size = 8", "Schedule.train_steps = 400",
    f"Schedule.num_train_images = {NUM_TRAIN}", "Schedule.steps_per_loop = 50",
    "Schedule.log_every_steps = 50", "Schedule.checkpoint_every_steps = 1000",
    "OptimizerConfig.learning_rate_per_64 = 0.064", f"train.seed = {TRAIN_SEED}"]
INFER_TOLERANCE = 0.005  # model_dir through infer vs metrics.json (module doc)
FORMAT_TOLERANCE = 0.02  # each exported format vs the model_dir, both through infer


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> dict:
  """The data set and the model_dir of one training run (see the module doc)."""
  from data_tools.make_shapes_dataset import make_dataset  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("learning_detection")
  data, model_dir = root / "shapes", root / "run"
  make_dataset(str(data), num_train=NUM_TRAIN, num_val=NUM_VAL, num_shards=1, seed=DATA_SEED,
               workers=1)
  paths = [f"TRAIN_FILE_PATTERN = '{data}/train-*'", f"EVAL_FILE_PATTERN = '{data}/val-*'",
           f"train.label_map_file = '{data}/label_map.json'",
           f"train.annotation_file = '{data}/val_annotations.json'"]
  e2e_cli.train("efficientdet_d0_shapes.gin", model_dir, paths + TRAIN_BINDINGS)
  metrics = json.loads((model_dir / "metrics.json").read_text())
  return {"root": root, "data": data, "model_dir": model_dir, "metrics": metrics}


def test_training_learns_to_detect_the_shapes(gate):
  metrics = gate["metrics"]
  assert metrics["step"] == 400 and metrics["weights"] == "EMA"
  ap50 = metrics["metrics"]["AP50"]
  print("AP50 at step 400:", ap50, "per-class AP:", metrics["per_class_AP"])
  assert ap50 >= AP50_FLOOR, f"AP50 {ap50:.4f} < floor {AP50_FLOOR}: training did not learn"
  unlearnt = {name: ap for name, ap in metrics["per_class_AP"].items() if ap < CLASS_AP_FLOOR}
  assert not unlearnt, f"classes below AP {CLASS_AP_FLOOR} (never learnt?): {unlearnt}"


def coco_ap50(detections_json: str, annotation_file: str) -> float:
  """AP at IoU 0.5 of a COCO results file against a COCO instances file (pycocotools)."""
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  with open(detections_json) as f:
    rows = json.load(f)
  assert rows, f"{detections_json} holds no detection"
  truth = COCO(annotation_file)
  evaluation = COCOeval(truth, truth.loadRes(rows), "bbox")
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  return float(evaluation.stats[1])


@pytest.fixture(scope="module")
def served(gate) -> dict:
  """{"tf" (the model_dir), "saved_model", "tflite_int8": AP50 of infer's detections.json}."""
  pytest.importorskip("ai_edge_litert", reason="tflite_int8 needs pip install ai-edge-litert")
  root, data = gate["root"], gate["data"]
  images = root / "val_png"
  images.mkdir()
  records = sorted(tf.io.gfile.glob(f"{data}/val-*.tfrecord"))
  for serialized in tf.data.TFRecordDataset(records):
    example = decode_example(serialized)
    image_id = int(example["source_id"].numpy())  # the COCO image id (make_shapes_dataset)
    Image.fromarray(example["image"].numpy()).save(images / f"{image_id}.png")
  assert len(os.listdir(images)) == NUM_VAL
  export = root / "export"
  e2e_cli.run_module("detlab.export", f"--model_dir={gate['model_dir']}",
                     f"--output_dir={export}", "--formats=saved_model,tflite_int8",
                     "--calibration_steps=16", f"--calibration_file_pattern={data}/train-*")
  models = {"tf": gate["model_dir"], "saved_model": export / "saved_model",
            "tflite_int8": export / "model_int8.tflite"}
  ap50 = {}
  for name, model in models.items():
    out = root / f"infer_{name}"
    e2e_cli.run_module("detlab.infer", f"--model={model}", f"--images={images}/*.png",
                       f"--output_dir={out}", "--score_threshold=0")
    ap50[name] = coco_ap50(str(out / "detections.json"), str(data / "val_annotations.json"))
  print("AP50 through infer:", ap50, "metrics.json:", gate["metrics"]["metrics"]["AP50"])
  return ap50


def test_the_served_model_dir_scores_what_training_evaluated(gate, served):
  evaluated = gate["metrics"]["metrics"]["AP50"]
  assert abs(served["tf"] - evaluated) <= INFER_TOLERANCE, (served["tf"], evaluated)


@pytest.mark.parametrize("name", ["saved_model", "tflite_int8"])
def test_an_exported_format_keeps_the_models_ap50(served, name):
  assert abs(served[name] - served["tf"]) <= FORMAT_TOLERANCE, (name, served[name], served["tf"])
