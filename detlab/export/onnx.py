"""ONNX export: an FP32 model by tf2onnx, an INT8 model by onnxruntime static quantisation.

The ONNX model takes the LiteRT model's inputs: `images` uint8 [B, S, S, 3] letterboxed by
tflite.letterbox_uint8 with the backbone's input convention, and `windows` float32 [B, 4],
where each image lies in its input (tflite.letterbox_window; [0, 0, S, S]: the whole input).
B is dynamic unless --batch_size. Inside: normalisation by that convention, the folded
network, the top-k (anchor, class) candidates, box decoding, clipping to the windows and the
NMS, so the file alone serves detections (onnxruntime, TensorRT, ... without TensorFlow).
Outputs, boxes in the S x S input's pixels (divide by the resize scale for original pixels):
  detection_boxes [B, D, 4] ymin, xmin, ymax, xmax; detection_scores [B, D] descending;
  detection_classes [B, D] category ids (float32, 0 in the padding); num_detections [B].

NMS: ONNX's NonMaxSuppression is hard NMS only (tf2onnx refuses NonMaxSuppressionV5 with a
soft_nms_sigma: "soft_nms_sigma must be 0"), so the graph carries its own greedy NMS
(`greedy_nms`): at most D steps of argmax, IoU of the chosen box with every candidate and a
decay of their scores (Gaussian for soft-NMS, 0/1 at the IoU threshold for hard NMS), in
plain ops that tf2onnx writes as one ONNX Loop over the whole batch. It selects what TF's
NonMaxSuppressionV5 selects (the same greedy rule, lower index first on a tie), so the ONNX
model keeps the protocol the model was evaluated with (PostprocessConfig: soft by default).
Only the candidates up to the last one above the score threshold enter the loop. Its cost is
mostly onnxruntime's own per-iteration overhead of a Loop (measured on the 128 px demo D0,
one image, a loaded 2-core machine: ~110 of ~170 ms per call; unrolling the 100 steps into
the graph was no faster and tripled the conversion time).

INT8 (onnxruntime.quantization.quantize_static, QDQ, per-channel int8 weights, uint8
activations, MinMax ranges from the calibration images the other INT8 formats read)
quantises the network only: every node of the post-processing (POSTPROCESS_SCOPE: top-k,
decoding, NMS) stays float, as LiteRT INT8's selective quantisation keeps it, and so do the
BiFPN fusions' adds (float_nodes).
"""
import itertools
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from detlab.detection import postprocess as postprocess_lib
from detlab.detection.postprocess import PostprocessConfig
from detlab.export.tflite import POSTPROCESS_SCOPE, representative_images
from detlab.io import write_bytes
from detlab.layers.fake_quant import is_quantization_aware
from detlab.layers.normalization import portable_forms
from detlab.necks import bifpn

PRECISIONS = ("fp32", "int8")
OPSET = 17
INSTALL_HINT = "pip install 'detlab[onnx]' (or pip install tf2onnx onnxruntime)"


def import_onnx_tools(converter: bool = False):
  """onnxruntime (and tf2onnx when `converter`), or an error saying how to install them."""
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
    if converter:
      import tf2onnx  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as error:
    raise ImportError(f"ONNX export and inference need tf2onnx and onnxruntime: "
                      f"{INSTALL_HINT}.") from error
  return onnxruntime


def greedy_nms(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, image_size: int,
               config: PostprocessConfig):
  """postprocess.nms_one_image for a whole batch, in ops ONNX has (see module doc).

  boxes [B, k, 4] clipped to [0, image_size] with y1 <= y2, x1 <= x2 (candidates()),
  scores [B, k], classes [B, k] int32 -> (boxes [B, D, 4], scores [B, D], classes [B, D]
  int32, num_detections [B] int32), zero past num_detections, D = max_detections. Per class
  by the same class offset as nms_one_image (boxes of two classes never overlap, so they
  never decay each other); IoU and the soft-NMS weight in the arithmetic of TF's kernel."""
  depth, threshold = config.max_detections, config.score_threshold
  batch, count = tf.shape(scores)[0], tf.shape(scores)[1]
  # Only the candidates up to the last one above the threshold (in any image) take part: the
  # others are never selected and so decay nothing (top-k sorts them: usually a prefix).
  positions = tf.range(count)[None, :]
  count = tf.maximum(tf.reduce_max(tf.where(scores > threshold, positions + 1, 0)), 1)
  boxes, scores, classes = boxes[:, :count], scores[:, :count], classes[:, :count]
  positions = positions[:, :count]
  offset_boxes = boxes + tf.cast(classes, tf.float32)[..., None] * (float(image_size) + 1.0)
  y1, x1, y2, x2 = tf.unstack(offset_boxes, axis=-1)  # [B, k] each, loop-invariant
  area = (y2 - y1) * (x2 - x1)
  flat = [tf.reshape(c, [-1]) for c in (y1, x1, y2, x2)]  # [B * k]: one Gather a corner
  row_start = (tf.range(batch) * count)[:, None]
  # The score of a selected or dropped candidate: finite (tf2onnx writes a select inside a
  # loop as cast(c) * x + cast(!c) * y, where -inf would make NaN) and below the threshold.
  gone = min(float(threshold), 0.0) - 1.0
  scale = -0.5 / (config.soft_nms_sigma / 2.0)  # TF's: -0.5 / its sigma (half the paper's)

  def step(i, live, indices, best_scores):
    index = tf.argmax(live, axis=-1, output_type=tf.int32)[:, None]  # first of a tie
    cy1, cx1, cy2, cx2 = (tf.gather(c, index + row_start) for c in flat)  # [B, 1] each
    height = tf.maximum(tf.minimum(y2, cy2) - tf.maximum(y1, cy1), 0.0)
    width = tf.maximum(tf.minimum(x2, cx2) - tf.maximum(x1, cx1), 0.0)
    intersection = height * width
    union = area + (cy2 - cy1) * (cx2 - cx1) - intersection
    # 0 where either box is empty (intersection 0; union 0 only if both are).
    iou = intersection / tf.maximum(union, 1e-30)
    if config.nms_mode == "soft":
      decayed = live * tf.exp(scale * iou * iou)
    else:
      decayed = tf.where(iou > config.iou_threshold, 0.0, live)
    keep = (live > threshold) & (decayed > threshold) & (positions != index)
    return (i + 1, tf.where(keep, decayed, gone), indices.write(i, index[:, 0]),
            best_scores.write(i, tf.reduce_max(live, axis=-1)))

  state = (tf.constant(0), tf.where(scores > threshold, scores, gone),
           tf.TensorArray(tf.int32, size=depth), tf.TensorArray(tf.float32, size=depth))
  _, _, indices, best_scores = tf.while_loop(lambda i, *_: i < depth, step, state,
                                             maximum_iterations=depth)
  best_scores = tf.transpose(best_scores.stack())  # [B, D]
  valid = best_scores > threshold  # False from the first step that found nothing on
  indices = tf.where(valid, tf.transpose(indices.stack()), 0)
  out_boxes = tf.where(valid[..., None], tf.gather(boxes, indices, batch_dims=1), 0.0)
  out_classes = tf.where(valid, tf.gather(classes, indices, batch_dims=1), 0)
  num = tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1)
  return out_boxes, tf.where(valid, best_scores, 0.0), out_classes, num


def onnx_function(serving, batch_size: int | None = None):
  """The ONNX graph as a tf.function: images uint8 [B, S, S, 3] letterboxed and windows
  [B, 4] -> OD API detections in input pixels (module doc)."""
  model, config = serving.model, serving.postprocess_config
  size = model.anchors.image_size
  num_anchors, num_classes = model.anchors.num_anchors, model.num_classes
  # A constant in the graph (a captured eager tensor would become a third model input).
  anchors = np.asarray(serving.anchor_boxes, np.float32)

  @tf.function(input_signature=[
      tf.TensorSpec([batch_size, size, size, 3], tf.uint8, name="images"),
      tf.TensorSpec([batch_size, 4], tf.float32, name="windows")])
  def detect(images, windows):
    class_outputs, box_outputs = model(serving.convention.normalize(images), training=False)[:2]
    with tf.name_scope(POSTPROCESS_SCOPE):  # kept float in INT8
      cls, box = model.flatten_outputs(class_outputs, box_outputs)
      cls = tf.ensure_shape(tf.cast(cls, tf.float32), [batch_size, num_anchors, num_classes])
      box = tf.ensure_shape(tf.cast(box, tf.float32), [batch_size, num_anchors, 4])
      boxes, scores, classes = postprocess_lib.candidates(cls, box, anchors, size, config,
                                                          windows)
      boxes, scores, classes, num = greedy_nms(boxes, scores, classes, size, config)
      valid = tf.range(config.max_detections)[None, :] < num[:, None]
      return {"detection_boxes": boxes, "detection_scores": scores,
              "detection_classes": tf.cast(tf.where(valid, classes + 1, 0), tf.float32),
              "num_detections": tf.cast(num, tf.float32)}
  return detect


class _CalibrationReader:
  """onnxruntime's CalibrationDataReader protocol over tflite.representative_images, in
  batches of batch_size (a static-batch model's; the last partial batch is left out)."""

  def __init__(self, files, size: int, steps: int, convention, batch_size: int = 1):
    self._images = representative_images(files, size, steps, convention)
    self._batch_size = batch_size

  def get_next(self):
    batch = list(itertools.islice(self._images, self._batch_size))
    if len(batch) < self._batch_size:
      return None
    return {name: np.concatenate([b[name] for b in batch]) for name in batch[0]}


def float_nodes(model) -> list[str]:
  """Names of the top-level graph nodes INT8 leaves float (tf2onnx keeps TF's names): all of
  POSTPROCESS_SCOPE, and the BiFPN fusions' adds. Those are binary adds in the model so that
  LiteRT keeps them int8; onnxruntime's static quantisation would give each its own
  calibrated output range, which moved a tiny model's detections (one to IoU 0.56 with the
  float one), where its float Sum of the dequantised inputs, as with TF's AddN, did not."""
  return [node.name for node in model.graph.node
          if node.name.startswith(f"{POSTPROCESS_SCOPE}/")
          or (node.op_type == "Add"
              and node.name.rsplit("/", 1)[-1].startswith(bifpn.FUSION_ADD_NAME))]


def quantize(model, files, size: int, steps: int, convention, batch_size: int | None = None):
  """The INT8 (QDQ) ModelProto of a float ModelProto, calibrated on `steps` images of files
  (batch_size: the model's static batch, None for a dynamic one)."""
  import onnx  # pylint: disable=import-outside-toplevel
  from onnxruntime import quantization  # pylint: disable=import-outside-toplevel
  directory = tempfile.mkdtemp(prefix="detlab_onnx_")
  try:
    source, target = os.path.join(directory, "fp32.onnx"), os.path.join(directory, "int8.onnx")
    onnx.save(model, source)
    quantization.quantize_static(
        source, target, _CalibrationReader(files, size, steps, convention, batch_size or 1),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
        nodes_to_exclude=float_nodes(model),
        # A conv's output is quantised where an int8 op reads it, not for the float
        # post-processing: the heads' logits and box deltas reach top-k and decoding unrounded
        # (rounded, boxes of a random tiny model moved to IoU 0.91 with the float ones; 0.997
        # without).
        extra_options={"OpTypesToExcludeOutputQuantization": ["Conv"]})
    return onnx.load(target)
  finally:
    shutil.rmtree(directory, ignore_errors=True)


@portable_forms()
def convert(serving, precisions=("fp32",), batch_size: int | None = None,
            calibration_files=None, calibration_steps: int = 100) -> dict:
  """{precision: onnx.ModelProto} of `serving` (a DetectionServing of a folded model); the
  graph is converted once and INT8 quantises that FP32 model."""
  for precision in precisions:
    if precision not in PRECISIONS:
      raise ValueError(f"ONNX precision must be one of {PRECISIONS}, got {precision!r}.")
  import_onnx_tools(converter=True)
  import onnx  # pylint: disable=import-outside-toplevel
  import tf2onnx  # pylint: disable=import-outside-toplevel
  function = onnx_function(serving, batch_size)
  model, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                           opset=OPSET)
  # tf2onnx logs an op it cannot convert and writes the model anyway: refuse it here.
  onnx.checker.check_model(model, full_check=True)
  models = {"fp32": model}
  if is_quantization_aware(serving.model):
    # Quantization-aware training: tf2onnx turns each FakeQuant op into a QuantizeLinear/
    # DequantizeLinear pair with the trained range, which onnxruntime runs as int8 convs.
    if precisions != ("int8",):
      raise ValueError("A fake-quantised serving model converts to onnx_int8 only.")
    models["int8"] = model
  elif "int8" in precisions:
    if not calibration_files:
      raise ValueError("ONNX INT8 needs calibration TFRecords (calibration_files).")
    models["int8"] = quantize(model, calibration_files, serving.model.anchors.image_size,
                              calibration_steps, serving.convention, batch_size)
  return {precision: models[precision] for precision in precisions}


def export_onnx(serving, paths: dict, batch_size: int | None = None, calibration_files=None,
                calibration_steps: int = 100) -> dict:
  """Writes {precision: path} (.onnx files, any tf.io.gfile file system); returns it."""
  models = convert(serving, tuple(paths), batch_size, calibration_files, calibration_steps)
  for precision, path in paths.items():
    write_bytes(path, models[precision].SerializeToString())
  return dict(paths)


def inference_session(path: str, num_threads: int | None = None):
  """An onnxruntime CPU session of the file at `path` (read through tf.io.gfile), on all the
  cores this process may use unless num_threads."""
  ort = import_onnx_tools()
  if not num_threads:
    num_threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count())
  options = ort.SessionOptions()
  options.intra_op_num_threads = num_threads
  with tf.io.gfile.GFile(path, "rb") as f:
    return ort.InferenceSession(f.read(), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, windows: np.ndarray) -> dict:
  """uint8 [B, S, S, 3] letterboxed, windows [B, 4] -> {output name: array}."""
  names = [output.name for output in session.get_outputs()]
  values = session.run(names, {"images": np.ascontiguousarray(images, np.uint8),
                               "windows": np.asarray(windows, np.float32)})
  return dict(zip(names, values))
