"""OpenVINO export: an FP32 IR, and an INT8 IR by NNCF post-training quantisation.

The IR takes the LiteRT model's input, uint8 [B, S, S, 3] letterboxed by
tflite.letterbox_uint8 with the backbone's input convention (B dynamic unless --batch_size),
normalises inside by that convention and runs the folded network, the top-k (anchor, class)
selection, box decoding and clipping. It outputs the pre-NMS candidates in that input's pixels: `boxes` [B, k, 4], `scores` [B, k] (sigmoid),
`classes` [B, k] int32 class indices, k = pre_nms_top_k.

Where NMS lives: outside the IR, in TensorFlow, the same `postprocess.nms_one_image` (Gaussian
soft-NMS or hard NMS per PostprocessConfig) the TF model and the SavedModel run. OpenVINO's
TF front end does convert NonMaxSuppressionV5, but with OpenVINO 2026.4 the compiled graph of
detlab's per-class soft-NMS crashes the CPU plugin at inference (a segfault, with or without
TensorFlow in the process), and keeping NMS in TF keeps the detection protocol identical to
the evaluated model's. The post-processing settings are stored beside the IR
(postprocess.json), so `OpenVinoDetector` needs only the directory.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from detlab.detection import postprocess as postprocess_lib
from detlab.detection.postprocess import PostprocessConfig
from detlab.export.tflite import representative_images
from detlab.io import write_json

PRECISIONS = ("fp32", "int8")
POSTPROCESS_FILE = "postprocess.json"
IR_FILES = ("model.xml", "model.bin")
INSTALL_HINT = "pip install 'detlab[openvino]' (or pip install openvino nncf)"


def import_openvino():
  """The openvino module, or an error saying how to install it."""
  try:
    import openvino  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"OpenVINO export and inference need the openvino package: "
                      f"{INSTALL_HINT}.") from error
  return openvino


def network_function(serving, batch_size: int | None = None):
  """uint8 [B, S, S, 3] letterboxed -> pre-NMS candidates (see module doc), as a tf.function."""
  model, config = serving.model, serving.postprocess_config
  size = model.anchors.image_size
  num_anchors, num_classes = model.anchors.num_anchors, model.num_classes

  @tf.function(input_signature=[tf.TensorSpec([batch_size, size, size, 3], tf.uint8,
                                              name="images")])
  def network(images):
    inputs = serving.convention.normalize(images)
    cls, box = model.flatten_outputs(*model(inputs, training=False))
    cls = tf.ensure_shape(tf.cast(cls, tf.float32), [batch_size, num_anchors, num_classes])
    box = tf.ensure_shape(tf.cast(box, tf.float32), [batch_size, num_anchors, 4])
    # postprocess.postprocess's first stage; its second (NMS) runs after the IR.
    boxes, scores, classes = postprocess_lib.candidates(cls, box, serving.anchor_boxes, size,
                                                        config)
    return {"boxes": boxes, "scores": scores, "classes": classes}
  return network


def nms_function(config: PostprocessConfig, image_size: int):
  """Candidates and the images' clip windows [B, 4] (postprocess.image_windows: the
  letterbox's image without its pad) -> OD API outputs in input pixels (classes as float
  category ids). Boxes wholly in the pad are dropped before NMS, as in the TF model."""
  @tf.function(reduce_retracing=True)
  def nms(boxes, scores, classes, windows):
    # The IR clipped to its whole input; candidates() scores what the window empties 0 too.
    boxes = postprocess_lib.clip_to_windows(boxes, windows)
    scores = tf.where(postprocess_lib.has_area(boxes), scores, 0.0)
    out_boxes, out_scores, out_classes, num = tf.map_fn(
        lambda args: postprocess_lib.nms_one_image(*args, image_size, config),
        (boxes, scores, classes), fn_output_signature=(tf.float32, tf.float32, tf.int32,
                                                       tf.int32))
    valid = tf.range(tf.shape(out_classes)[1])[None, :] < num[:, None]
    return {"detection_boxes": out_boxes, "detection_scores": out_scores,
            "detection_classes": tf.cast(tf.where(valid, out_classes + 1, 0), tf.float32),
            "num_detections": tf.cast(num, tf.float32)}
  return nms


def convert(serving, precision: str = "fp32", batch_size: int | None = None,
            calibration_files=None, calibration_steps: int = 100):
  """The openvino.Model of `serving` (a DetectionServing of a folded model)."""
  if precision not in PRECISIONS:
    raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}.")
  ov = import_openvino()
  function = network_function(serving, batch_size)
  model = ov.convert_model(function.get_concrete_function())
  if precision == "int8":
    try:
      import nncf  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise ImportError(f"OpenVINO INT8 needs NNCF: {INSTALL_HINT}.") from error
    # The images LiteRT's INT8 calibration reads, letterboxed the same way.
    images = [batch["images"] for batch in representative_images(
        calibration_files, serving.model.anchors.image_size, calibration_steps,
        serving.convention)]
    if not images:
      raise ValueError(f"No calibration image could be read from {calibration_files}.")
    # Convs and matmuls get int8 weights and activations; top-k, decode and the outputs stay
    # float (NNCF quantises only the inputs of ops with integer kernels).
    model = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images))
  return model


def is_local(path: str) -> bool:
  """A path OpenVINO can open itself: no `scheme://` (gs://, s3://, ram://, hdfs://, ...)."""
  return "://" not in path


@contextlib.contextmanager
def local_directory():
  """A fresh local temporary directory (detlab_openvino_*), removed on exit whatever happens:
  where OpenVINO, which reads and writes local files only, meets a remote path."""
  directory = tempfile.mkdtemp(prefix="detlab_openvino_")
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def export_openvino(serving, directory: str, precision: str = "fp32",
                    batch_size: int | None = None, calibration_files=None,
                    calibration_steps: int = 100) -> str:
  """Writes directory/model.xml (+ .bin) and postprocess.json on any tf.io.gfile file system
  (a remote directory is written through a local temporary one, copied with tf.io.gfile);
  returns the model.xml path."""
  ov = import_openvino()
  model = convert(serving, precision, batch_size, calibration_files, calibration_steps)
  tf.io.gfile.makedirs(directory)
  # FP32 stays FP32: save_model would otherwise store the weights as FP16.
  if is_local(directory):
    ov.save_model(model, os.path.join(directory, "model.xml"), compress_to_fp16=False)
  else:
    with local_directory() as local:
      ov.save_model(model, os.path.join(local, "model.xml"), compress_to_fp16=False)
      for name in IR_FILES:
        tf.io.gfile.copy(os.path.join(local, name), os.path.join(directory, name), True)
  write_json(os.path.join(directory, POSTPROCESS_FILE),
             {"image_size": serving.model.anchors.image_size,
              **dataclasses.asdict(serving.postprocess_config)}, indent=2)
  return os.path.join(directory, "model.xml")


class OpenVinoDetector:
  """An exported IR + detlab's NMS: uint8 [B, S, S, 3] letterboxed -> OD API outputs (numpy,
  boxes in the letterboxed input's pixels, classes as float category ids)."""

  def __init__(self, path: str, num_threads: int | None = None):
    ov = import_openvino()
    if not path.endswith(".xml"):
      path = os.path.join(path, "model.xml")
    directory = os.path.dirname(path)
    with tf.io.gfile.GFile(os.path.join(directory, POSTPROCESS_FILE)) as f:
      settings = json.load(f)
    self.image_size = int(settings.pop("image_size"))
    self.nms = nms_function(PostprocessConfig(**settings), self.image_size)
    core = ov.Core()
    # float32 arithmetic outside the int8 convs: the CPU plugin would otherwise pick bf16 on
    # CPUs with native bf16 (AVX512-BF16/AMX) and move scores by ~1e-3.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if num_threads:
      config["INFERENCE_NUM_THREADS"] = num_threads
    if is_local(path):
      self.compiled = core.compile_model(core.read_model(path), "CPU", config)
    else:  # OpenVINO reads local files only; the compiled model needs them no longer
      xml = os.path.basename(path)
      with local_directory() as local:
        for name in (xml, xml[:-len(".xml")] + ".bin"):  # the IR and its weights
          tf.io.gfile.copy(os.path.join(directory, name), os.path.join(local, name))
        self.compiled = core.compile_model(core.read_model(os.path.join(local, xml)), "CPU",
                                           config)
    shape = self.compiled.inputs[0].get_partial_shape()
    self.batch_size = None if shape[0].is_dynamic else shape[0].get_length()
    self.request = self.compiled.create_infer_request()
    self.outputs = {name: self.compiled.output(name) for name in ("boxes", "scores", "classes")}

  def __call__(self, images: np.ndarray, windows: np.ndarray | None = None) -> dict:
    """images uint8 [B, S, S, 3]; windows float32 [B, 4]: where each image lies in its
    letterboxed input (y1, x1, y2, x2; None: the whole input)."""
    if windows is None:
      windows = np.tile(np.float32([0, 0, self.image_size, self.image_size]),
                        [len(images), 1])
    result = self.request.infer([np.ascontiguousarray(images, np.uint8)])
    found = self.nms(*(tf.constant(result[self.outputs[n]]) for n in ("boxes", "scores",
                                                                        "classes")),
                     tf.constant(windows, tf.float32))
    return {k: v.numpy() for k, v in found.items()}
