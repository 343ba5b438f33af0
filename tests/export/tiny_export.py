"""A tiny exported detector shared by the runner and infer tests (fixtures, via conftest).

The tests' tiny backbone at 64 px with levels 3-5: the export of saved_model + LiteRT FP32
takes seconds, where D0 would take a minute."""
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import api
from detlab.export import exporter
from random_stats import randomize_batch_norms, randomize_biases  # pylint: disable=import-error
from tiny_backbone import tiny_test_backbone  # noqa: F401  pylint: disable=import-error

TINY = ["IMAGE_SIZE = 64", "NUM_CLASSES = 3", "efficientdet.backbone_fn = @tiny_test_backbone",
        "efficientdet.fpn_width = 16", "efficientdet.fpn_cells = 1",
        "efficientdet.head_repeats = 1", "efficientdet.max_level = 5"]
NAMES = {1: "circle", 2: "square", 3: "triangle"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
  """ckpt-1 of a tiny detector with non-trivial BN statistics and biases, config.gin binding
  a label map (the model's own class names)."""
  directory = tmp_path_factory.mktemp("tiny_model_dir")
  label_map = directory / "label_map.json"
  label_map.write_text('{"1": "circle", "2": "square", "3": "triangle"}')
  # Weights from this seed whatever ran before in the process (TF's op seeds come from a
  # global counter): the parity test's AP gaps are the same alone and after other tests.
  keras.utils.set_random_seed(1)
  model = api.load_detector(["efficientdet_d0.gin"],
                            TINY + [f"train.label_map_file = '{label_map}'"])
  randomize_batch_norms(model, seed=0)
  randomize_biases(model, seed=1)  # scores spread around 0.5 instead of the 0.01 prior
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory),
                             max_to_keep=1).save(checkpoint_number=1)
  (directory / "config.gin").write_text(api.detector_config(model))
  return directory


def openvino_ready() -> bool:
  try:
    import openvino  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def _export_openvino_directly(model_dir, out) -> None:
  """OUT/openvino_fp32 as the exporter writes it (load, fold, export_openvino), for an
  exporter that does not list the format yet."""
  from detlab.export.fold import fold_batch_norms  # pylint: disable=import-outside-toplevel
  from detlab.export.openvino import export_openvino  # pylint: disable=import-outside-toplevel
  from detlab.export.saved_model import DetectionServing  # pylint: disable=import-outside-toplevel
  model = api.load_detector([str(model_dir / "config.gin")], checkpoint=str(model_dir))
  eval_input, task = api.inference_setup(model)
  serving = DetectionServing(fold_batch_norms(model), task.postprocess_config, eval_input)
  export_openvino(serving, str(out / "openvino_fp32"))


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, tmp_path_factory):
  """python -m detlab.export's output directory for the tiny model: saved_model/,
  model_fp32.tflite (and openvino_fp32/ where the exporter writes it)."""
  pytest.importorskip("ai_edge_litert", reason="the LiteRT runner needs ai-edge-litert")
  out = tmp_path_factory.mktemp("tiny_export") / "out"
  in_exporter = openvino_ready() and "openvino_fp32" in exporter.IMPLEMENTED_FORMATS
  formats = ["saved_model", "tflite_fp32"] + (["openvino_fp32"] if in_exporter else [])
  exporter.export(str(tiny_model_dir), str(out), formats)
  if openvino_ready() and not in_exporter:
    _export_openvino_directly(tiny_model_dir, out)
  return out
