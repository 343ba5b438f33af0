"""LiteRT (TFLite) export: FP32, FP16 weights, INT8 with calibration from the eval TFRecords.

The LiteRT model takes uint8 [B, S, S, 3], the image already resized keeping its aspect ratio
(long side S) and padded bottom/right to S x S with the mean colour of the backbone's input
convention (letterbox_uint8; export.json records the convention); it normalises inside by
that convention and runs the folded model and post-processing with plain TF ops that LiteRT
has builtin kernels for (top-k, gather, NonMaxSuppressionV5 with the same soft/hard NMS as
the SavedModel, not the TFLite detection post-processing op, so detections follow the same
protocol). Its second input, `windows` float32 [B, 4], says where each image lies in its
letterboxed input (0, 0, resized height, resized width; letterbox_window): boxes are clipped
to it before NMS and those it leaves empty (wholly in the pad) are dropped, as the SavedModel
does ([0, 0, S, S] clips to the whole input). INT8 only: a box wholly in the pad comes out
with zero area (IoU 0 with every box, so it changed no other row): drop such rows
(runners.load_runner does); the rest are the SavedModel's first rows. Outputs, boxes in that S x S input's pixels:
  detection_boxes [B, D, 4] ymin, xmin, ymax, xmax; detection_scores [B, D];
  detection_classes [B, D] category ids (float32, 0 in the padding); num_detections [B].
INT8 quantises the network only; the post-processing stays float (network_only_int8).
FP32 and FP16 files of an instance-segmentation model add detection_masks [B, D, M, M] (the
SavedModel's: box-relative probabilities, 0 in the padding); INT8 is not written for one
(the exporter refuses it, exporter.MASK_REFUSALS: the INT8 conversion of the mask model fails
with "scale out of expressed type range", also with the RoIAlign kept float).
Divide boxes by the resize scale to get original pixels. Run it with
`ai_edge_litert.interpreter.Interpreter` (tf.lite.Interpreter is deprecated in TF 2.20).
"""
import itertools
import os

import numpy as np
import tensorflow as tf

from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention
from detlab.data.tf_example import decode_example
from detlab.detection import postprocess as postprocess_lib
from detlab.export.saved_model import MASK_OUTPUT, detection_masks
from detlab.models.instance_segmentation import has_mask_branch
from detlab.io import write_bytes
from detlab.layers.normalization import portable_forms

PRECISIONS = ("fp32", "fp16", "int8")
POSTPROCESS_SCOPE = "postprocess"  # the graph's ops after the network's last convs
# Kept float in INT8 wherever they are: ops of the post-processing only (none in the network),
# whose fused or constant tensors the scope's names miss (the anchors feed a GATHER).
FLOAT_OPS = ["TOPK_V2", "GATHER", "SPLIT"]


def letterbox_uint8(image: tf.Tensor, size: int,
                    convention: InputConvention = IMAGENET_MEAN_STD) -> tuple[tf.Tensor, tf.Tensor]:
  """uint8 [H, W, 3] -> (uint8 [size, size, 3] input for the LiteRT model, scale []).

  The pad is the convention's mean colour, which normalises to 0 (up to uint8 rounding): the
  evaluation pipeline's normalise-then-pad-with-0. The pad is built in uint8 beside the
  resized pixels (one float pass over the image, not three: at 480x640 -> 512 a compiled call
  took 3.9 ms instead of 5.1, same bytes)."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.reduce_min(float(size) / shape)
  scaled = tf.cast(tf.round(shape * scale), tf.int32)
  resized = tf.image.resize(tf.cast(image, tf.float32), scaled)
  pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
  fill = tf.cast(tf.clip_by_value(tf.round(tf.constant(convention.mean, tf.float32)), 0.0,
                                  255.0), tf.uint8)
  rows = tf.concat([pixels, tf.broadcast_to(fill, [scaled[0], size - scaled[1], 3])], axis=1)
  return tf.concat([rows, tf.broadcast_to(fill, [size - scaled[0], size, 3])], axis=0), scale


def letterbox_window(shape, scale) -> np.ndarray:
  """float32 [4]: where letterbox_uint8 puts an image of `shape` (h, w) resized by `scale`
  in its input: (0, 0, resized h, resized w), the rest being the pad."""
  resized = np.round(np.asarray(shape[:2], np.float32) * np.float32(scale))
  return np.concatenate([np.zeros(2, np.float32), resized]).astype(np.float32)


def static_batch_postprocess(class_outputs, box_outputs, anchors, image_size: int, config,
                             batch_size: int, windows=None, drop_empty: bool = True) -> dict:
  """postprocess() for a static batch: NMS per image in a Python loop instead of map_fn,
  whose TensorList ops LiteRT has no builtin kernels for. The same two stages."""
  # INT8 (drop_empty=False) masks no empty box: a select on the scores made the converter
  # round them through int8 (after the sigmoid) or broke the class head's calibrated range
  # (before it). An empty box (wholly in the pad) has IoU 0 with every box, so it changes no
  # other detection; it only takes a slot, and the runner drops such rows.
  boxes, scores, classes = postprocess_lib.candidates(class_outputs, box_outputs, anchors,
                                                      image_size, config, windows,
                                                      drop_empty=drop_empty)
  per_image = [postprocess_lib.nms_one_image(boxes[i], scores[i], classes[i], image_size,
                                             config) for i in range(batch_size)]
  out_boxes, out_scores, out_classes, num = (tf.stack(parts) for parts in zip(*per_image))
  return {"boxes": out_boxes, "scores": out_scores, "classes": out_classes,
          "num_detections": num}


def lite_function(serving, batch_size: int, drop_empty: bool = True):
  """The LiteRT graph: uint8 [B, S, S, 3] letterboxed and their windows [B, 4] ->
  detections in input pixels."""
  model = serving.model
  size = model.anchors.image_size

  @tf.function(input_signature=[
      tf.TensorSpec([batch_size, size, size, 3], tf.uint8, name="images"),
      tf.TensorSpec([batch_size, 4], tf.float32, name="windows")])
  def detect(images, windows):
    inputs = serving.convention.normalize(images)
    outputs = model(inputs, training=False)
    class_outputs, box_outputs = outputs[:2]
    with tf.name_scope(POSTPROCESS_SCOPE):  # kept float in INT8 (see convert)
      cls, box = model.flatten_outputs(class_outputs, box_outputs)
      found = static_batch_postprocess(cls, box, serving.anchor_boxes, size,
                                       serving.postprocess_config, batch_size, windows,
                                       drop_empty)
    num = found["num_detections"]
    valid = tf.range(tf.shape(found["classes"])[1])[None, :] < num[:, None]
    result = {"detection_boxes": found["boxes"], "detection_scores": found["scores"],
              "detection_classes": tf.cast(tf.where(valid, found["classes"] + 1, 0),
                                           tf.float32),
              "num_detections": tf.cast(num, tf.float32)}
    if has_mask_branch(model):  # the mask branch at the detections (input pixels)
      result[MASK_OUTPUT] = detection_masks(model, outputs[2], found)
    return result
  return detect


def representative_images(files: list[str], size: int, steps: int,
                          convention: InputConvention = IMAGENET_MEAN_STD):
  """Calibration inputs: the first `steps` eval images, letterboxed like serving inputs
  ({"images": [1, S, S, 3], "windows": [1, 4]}, by name: the flatbuffer orders its inputs
  its own way)."""
  dataset = tf.data.TFRecordDataset(files).map(lambda s: decode_example(s)["image"])
  for image in itertools.islice(dataset, steps):
    pixels, scale = letterbox_uint8(image, size, convention)
    yield {"images": pixels[None].numpy(),
           "windows": letterbox_window(image.shape, float(scale))[None]}


@portable_forms()
def convert(serving, precision: str, batch_size: int = 1, calibration_files=None,
            calibration_steps: int = 100) -> bytes:
  """The LiteRT flatbuffer of `serving` (a DetectionServing of a folded model)."""
  if precision not in PRECISIONS:
    raise ValueError(f"LiteRT precision must be one of {PRECISIONS}, got {precision!r}.")
  function = lite_function(serving, batch_size, drop_empty=precision != "int8")
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], serving.model)
  if precision == "fp16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif precision == "int8":
    if batch_size != 1:
      raise ValueError("INT8 calibration feeds single images: export tflite_int8 with "
                       "--batch_size=1.")
    size = serving.model.anchors.image_size
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: representative_images(
        calibration_files, size, calibration_steps, serving.convention)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    return network_only_int8(converter, float_tensor_names(function, serving.model))
  return converter.convert()


def float_tensor_names(function, model) -> list[str]:
  """The tensor names of the post-processing (POSTPROCESS_SCOPE) and of the outputs, as the
  float flatbuffer names them (the INT8 conversion names its tensors the same way)."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  flat = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], model).convert()
  names = [t["name"] for t in Interpreter(model_content=flat).get_tensor_details()]
  return [n for n in names if f"{POSTPROCESS_SCOPE}/" in n or
          n.startswith("StatefulPartitionedCall")]


def network_only_int8(converter, float_names: list[str]) -> bytes:
  """Full-integer convs and activations, float post-processing.

  Plain full-integer conversion quantises everything with an int8 kernel, the
  post-processing too: the top-k ran on int8 logits (ties), sigmoid scores had 256 levels and
  the box decoding (exp, mul, add) ran in int8 - measured dAP -0.9 on the random parity model.
  TFLite's selective quantisation (QuantizationDebugger's denylist) keeps the named tensors
  and FLOAT_OPS float (else the anchors became an int8 constant, 1.25 px steps at 64 px);
  the network's int8 head outputs are dequantised once before the post-processing."""
  options = tf.lite.experimental.QuantizationDebugOptions(
      denylisted_nodes=float_names, denylisted_ops=FLOAT_OPS)
  debugger = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=converter.representative_dataset,
      debug_options=options)
  return debugger.get_nondebug_quantized_model()


def export_tflite(serving, path: str, precision: str, batch_size: int = 1,
                  calibration_files=None, calibration_steps: int = 100) -> str:
  """Writes `path` (.tflite); returns it."""
  write_bytes(path, convert(serving, precision, batch_size, calibration_files, calibration_steps))
  return path


def signature_runner(path: str):
  """A LiteRT file's signature runner (ai_edge_litert), on all the cores this process may use,
  as TF and OpenVINO take by default: `runner(images=uint8 [B, S, S, 3])` -> {name: array}."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  with tf.io.gfile.GFile(path, "rb") as f:  # Interpreter reads local files only
    interpreter = Interpreter(model_content=f.read(), num_threads=cores)
  return interpreter.get_signature_runner()


def full_windows(images) -> np.ndarray:
  """[B, 4] windows covering the whole [B, S, S, 3] inputs (no letterbox pad known)."""
  size = np.shape(images)[1:3]
  return np.tile(np.float32([0, 0, size[0], size[1]]), [np.shape(images)[0], 1])


def run_tflite(path: str, images: np.ndarray, windows: np.ndarray | None = None) -> dict:
  """Runs a LiteRT file on uint8 [B, S, S, 3] (windows [B, 4], default the whole input);
  {output name: array}."""
  return signature_runner(path)(images=images,
                                windows=full_windows(images) if windows is None else windows)
