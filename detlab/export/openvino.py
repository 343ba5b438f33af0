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

An instance-segmentation model (has_mask_branch) gets a second IR, mask.xml (+ mask.bin): its
mask branch (RoIAlign of the BiFPN levels at the boxes, the conv tower, the sigmoid) from
`features_<level>` [B, h, w, C], `boxes` [B, N, 4] (input pixels) and `classes` [B, N] int32
class indices to `masks` [B, N, M, M] box-relative probabilities; model.xml then also outputs
the `features_<level>` it reads. The branch has to run after NMS (it crops at the final
boxes), and NMS stays in TF (above), so one IR cannot hold both; and two IRs are also the
faster form: N is dynamic, so OpenVinoDetector runs the branch on the images' largest
num_detections rows only, not on max_detections rows of which most are padding (the
SavedModel computes all max_detections and zeroes the padding: the same valid rows). The mask
IR converts whole (tfm's MultilevelROIAligner is gathers and arithmetic): no op of it runs in
TF. OpenVinoDetector returns the SavedModel's `detection_masks` [B, D, M, M] (0 past
num_detections). INT8 quantises the mask IR's convs too, calibrated on the branch's inputs at
the calibration images' detections; the exporter refuses openvino_int8 for a mask model all
the same (exporter.MASK_REFUSALS: the masks lost 0.44 AP on the shapes demo).
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
from detlab.layers.fake_quant import is_quantization_aware
from detlab.layers.normalization import portable_forms
from detlab.models.instance_segmentation import has_mask_branch, mask_probabilities

PRECISIONS = ("fp32", "int8")
POSTPROCESS_FILE = "postprocess.json"
IR_FILES = ("model.xml", "model.bin")
MASK_IR = "mask.xml"  # an instance-segmentation model's mask branch (+ mask.bin), beside it
FEATURE_PREFIX = "features_"  # features_<level>: model.xml's extra outputs, mask.xml's inputs
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
    outputs = model(inputs, training=False)
    cls, box = model.flatten_outputs(*outputs[:2])
    cls = tf.ensure_shape(tf.cast(cls, tf.float32), [batch_size, num_anchors, num_classes])
    box = tf.ensure_shape(tf.cast(box, tf.float32), [batch_size, num_anchors, 4])
    # postprocess.postprocess's first stage; its second (NMS) runs after the IR.
    boxes, scores, classes = postprocess_lib.candidates(cls, box, serving.anchor_boxes, size,
                                                        config)
    result = {"boxes": boxes, "scores": scores, "classes": classes}
    if has_mask_branch(model):  # what the mask IR reads at the boxes NMS keeps
      result.update({FEATURE_PREFIX + level: tf.cast(feature, tf.float32)
                     for level, feature in outputs[2].items()})
    return result
  return network


def mask_function(serving):
  """The mask branch as a tf.function (see module doc): features_<level> [B, h, w, C],
  boxes [B, N, 4] in input pixels, classes [B, N] class indices -> masks [B, N, M, M]
  sigmoid probabilities (SavedModel detection_masks' rows)."""
  model = serving.model
  size = model.anchors.image_size
  levels = [str(l) for l in range(model.anchors.min_level, model.anchors.max_level + 1)]
  _, _, features = model(tf.zeros([1, size, size, 3]), training=False)  # their shapes
  specs = [tf.TensorSpec([None, *features[l].shape[1:]], tf.float32,
                         name=FEATURE_PREFIX + l) for l in levels]
  specs += [tf.TensorSpec([None, None, 4], tf.float32, name="boxes"),
            tf.TensorSpec([None, None], tf.int32, name="classes")]

  @tf.function(input_signature=specs)
  def masks(*args):
    return {"masks": mask_probabilities(model, dict(zip(levels, args[:len(levels)])),
                                        args[-2], args[-1])}
  return masks


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
            "num_detections": tf.cast(num, tf.float32), "class_indices": out_classes}
  return nms


def calibration_images(serving, calibration_files, calibration_steps: int) -> list:
  """The images LiteRT's INT8 calibration reads, letterboxed the same way (uint8 [1, S, S, 3])."""
  images = [batch["images"] for batch in representative_images(
      calibration_files, serving.model.anchors.image_size, calibration_steps,
      serving.convention)]
  if not images:
    raise ValueError(f"No calibration image could be read from {calibration_files}.")
  return images


def quantize(model, samples: list):
  """NNCF post-training INT8 of an openvino.Model on `samples` (its inputs, one per step)."""
  try:
    import nncf  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"OpenVINO INT8 needs NNCF: {INSTALL_HINT}.") from error
  # Convs and matmuls get int8 weights and activations; top-k, decode, RoIAlign's gathers and
  # the outputs stay float (NNCF quantises only the inputs of ops with integer kernels).
  # MIXED: symmetric weights, asymmetric (zero-pointed) activations. The default PERFORMANCE
  # preset's symmetric activation ranges cost the shapes demos' AP far more (300 val images:
  # Lite0 -0.044 vs -0.015, D0 -0.063 vs -0.025 against the float model) for ~4 % of speed
  # (D0 512 IR call 52.8 vs 55.0 ms on a 2-core AVX-512 VNNI CPU).
  return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                       preset=nncf.QuantizationPreset.MIXED)


def mask_samples(serving, network, images: list) -> list:
  """The mask IR's calibration inputs: {input name: array} at each calibration image's
  detections, found by the float network IR `network` and the TF NMS."""
  ov = import_openvino()
  compiled = ov.Core().compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
  size = serving.model.anchors.image_size
  nms = nms_function(serving.postprocess_config, size)
  names = [o.get_any_name() for o in compiled.outputs]
  samples = []
  for image in images:
    result = compiled([image])
    outputs = {name: result[compiled.output(name)] for name in names}
    found = nms(*(tf.constant(outputs[n]) for n in ("boxes", "scores", "classes")),
                tf.constant([[0, 0, size, size]], tf.float32))
    count = max(int(found["num_detections"].numpy().max()), 1)
    samples.append({**{n: v for n, v in outputs.items() if n.startswith(FEATURE_PREFIX)},
                    "boxes": found["detection_boxes"].numpy()[:, :count],
                    "classes": found["class_indices"].numpy()[:, :count]})
  return samples


def unstable_top_k(model):
  """`model` with every TopK's `stable` attribute off (in place; returns it).

  TF's top_k converts to a stable TopK, which OpenVINO 2026.4's CPU plugin runs slowly when
  many scores tie exactly: a ReLU6 detector (EfficientDet-Lite0, trained on the shapes demo)
  gives thousands of equal (anchor, class) scores where its features saturate, and the
  pre-NMS TopK took 0.6 s of a 0.63 s call (2.9 img/s at 128 px; 29 img/s unstable). Stability
  only orders equal scores, which NMS then ranks alike."""
  for op in model.get_ops():
    if op.get_type_name() == "TopK":
      op.set_attribute("stable", False)
  return model


@portable_forms()
def convert(serving, precision: str = "fp32", batch_size: int | None = None,
            calibration_files=None, calibration_steps: int = 100):
  """The openvino.Model of `serving` (a DetectionServing of a folded model); for a model
  with a mask branch, the pair (network, mask branch) (see module doc)."""
  if precision not in PRECISIONS:
    raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}.")
  ov = import_openvino()
  network = unstable_top_k(
      ov.convert_model(network_function(serving, batch_size).get_concrete_function()))
  masks = None
  if has_mask_branch(serving.model):
    masks = ov.convert_model(mask_function(serving).get_concrete_function())
  if precision == "int8" and is_quantization_aware(serving.model):
    pass  # its FakeQuantWithMinMaxVars ops convert to FakeQuantize: INT8 with trained ranges
  elif precision == "int8":
    images = calibration_images(serving, calibration_files, calibration_steps)
    if masks is not None:  # its inputs from the float network, before that is quantised
      masks = quantize(masks, mask_samples(serving, network, images))
    network = quantize(network, images)
  return network if masks is None else (network, masks)


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
  returns the model.xml path. A model with a mask branch adds mask.xml (+ .bin) beside it."""
  ov = import_openvino()
  models = convert(serving, precision, batch_size, calibration_files, calibration_steps)
  models = dict(zip(("model.xml", MASK_IR), models if isinstance(models, tuple)
                    else (models,)))
  tf.io.gfile.makedirs(directory)
  # FP32 stays FP32: save_model would otherwise store the weights as FP16.
  if is_local(directory):
    for xml, model in models.items():
      ov.save_model(model, os.path.join(directory, xml), compress_to_fp16=False)
  else:
    with local_directory() as local:
      for xml, model in models.items():
        ov.save_model(model, os.path.join(local, xml), compress_to_fp16=False)
        for name in (xml, xml[:-len(".xml")] + ".bin"):
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
    mask_path = os.path.join(directory, MASK_IR)
    xmls = [path] + ([mask_path] if tf.io.gfile.exists(mask_path) else [])
    if is_local(path):
      compiled = [core.compile_model(core.read_model(xml), "CPU", config) for xml in xmls]
    else:  # OpenVINO reads local files only; the compiled models need them no longer
      with local_directory() as local:
        compiled = []
        for xml in map(os.path.basename, xmls):
          for name in (xml, xml[:-len(".xml")] + ".bin"):  # the IR and its weights
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(local, name))
          compiled.append(core.compile_model(core.read_model(os.path.join(local, xml)), "CPU",
                                             config))
    self.compiled, self.masks = compiled[0], (compiled[1] if len(compiled) > 1 else None)
    shape = self.compiled.inputs[0].get_partial_shape()
    self.batch_size = None if shape[0].is_dynamic else shape[0].get_length()
    self.request = self.compiled.create_infer_request()
    self.outputs = {name: self.compiled.output(name) for name in ("boxes", "scores", "classes")}
    if self.masks is not None:  # model.xml's features_<level> feed mask.xml's same-named inputs
      self.features = [i.get_any_name() for i in self.masks.inputs
                       if i.get_any_name().startswith(FEATURE_PREFIX)]
      self.outputs.update({name: self.compiled.output(name) for name in self.features})
      self.mask_request = self.masks.create_infer_request()

  def __call__(self, images: np.ndarray, windows: np.ndarray | None = None) -> dict:
    """images uint8 [B, S, S, 3]; windows float32 [B, 4]: where each image lies in its
    letterboxed input (y1, x1, y2, x2; None: the whole input). With a mask IR the outputs add
    detection_masks [B, D, M, M] (the SavedModel's; 0 past num_detections)."""
    if windows is None:
      windows = np.tile(np.float32([0, 0, self.image_size, self.image_size]),
                        [len(images), 1])
    result = self.request.infer([np.ascontiguousarray(images, np.uint8)])
    found = self.nms(*(tf.constant(result[self.outputs[n]]) for n in ("boxes", "scores",
                                                                        "classes")),
                     tf.constant(windows, tf.float32))
    found = {k: v.numpy() for k, v in found.items()}
    classes = found.pop("class_indices")
    if self.masks is not None:
      found["detection_masks"] = self._masks(result, found, classes)
    return found

  def _masks(self, result, found: dict, classes: np.ndarray) -> np.ndarray:
    """The mask IR on the first max(num_detections) rows (the rest are padding; see the
    module doc), zero-padded to max_detections and zero past each image's count."""
    boxes = found["detection_boxes"]
    num = found["num_detections"].astype(np.int64)
    size = self.masks.output("masks").get_partial_shape()[-1].get_length()
    masks = np.zeros([*boxes.shape[:2], size, size], np.float32)
    count = int(num.max()) if len(num) else 0
    if count:
      feed = {name: result[self.outputs[name]] for name in self.features}
      feed.update(boxes=np.ascontiguousarray(boxes[:, :count]),
                  classes=np.ascontiguousarray(classes[:, :count], np.int32))
      masks[:, :count] = self.mask_request.infer(feed)[self.masks.output("masks")]
      masks[np.arange(masks.shape[1])[None, :] >= num[:, None]] = 0.0
    return masks
