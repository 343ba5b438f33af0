"""One detector interface over every exported format and a model_dir: `load_runner(path)`.

  runner = load_runner("/tmp/d0_export/model_fp16.tflite")
  out = runner([image_uint8, ...])   # or one [H, W, 3] image, or a [B, H, W, 3] batch

Each runner returns what `detlab.api.detect` returns, numpy arrays in each image's ORIGINAL
pixels: "boxes" [B, D, 4] ymin, xmin, ymax, xmax; "scores" [B, D] descending; "classes"
[B, D] int32 category ids (0 in the padding); "num_detections" [B] int32. `category_names`
is the model's {category id: name} where the export or the model_dir records it, else None.
An instance-segmentation model (a model_dir, or a SavedModel serving detection_masks) also
gives "masks": a list of B uint8 0/1 arrays [D, H, W], each detection's mask in its image's
own pixels (api.paste_masks). LiteRT FP32/FP16 files and OpenVINO FP32 IRs (model.xml and
the mask branch's mask.xml beside it) carry masks too; the INT8 formats do not (the exporter
refuses them for a mask model).

The path picks the format (see ACCEPTED): a training model_dir (detlab.api), a SavedModel
directory or an export OUT directory (tf.saved_model.load: the SavedModel needs no detlab),
a LiteRT .tflite file (ai_edge_litert), an OpenVINO model.xml (openvino) or an ONNX file
(onnxruntime). The LiteRT, OpenVINO and ONNX models take the letterboxed uint8 input of
tflite.letterbox_uint8; their boxes, in that input's pixels, are mapped back by
saved_model.to_original_pixels, the serving SavedModel's own mapping. ONNX files carry no
masks (the exporter refuses them for a mask model).
"""
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf

ACCEPTED = (
    "a training model_dir (ckpt-N files + config.gin or operative_config.gin)",
    "an export directory (python -m detlab.export --output_dir=OUT: its saved_model/, else "
    "its first .tflite or OpenVINO model)",
    "a SavedModel directory (OUT/saved_model, holding saved_model.pb)",
    "a LiteRT file ending in .tflite (OUT/model_fp32.tflite, _fp16, _int8)",
    "an OpenVINO IR file ending in .xml, or the directory holding model.xml "
    "(OUT/openvino_fp32/model.xml)",
    "an ONNX file ending in .onnx (OUT/model_fp32.onnx, _int8)",
)


class RunnerError(ValueError):
  """A path that no runner can load; the message lists the accepted forms."""


def as_image_list(images) -> list[np.ndarray]:
  """One [H, W, 3] image, a list of them or a [B, H, W, 3] batch -> list of uint8 arrays."""
  if isinstance(images, (list, tuple)):
    items = [np.asarray(i) for i in images]
  else:
    batch = np.asarray(images)
    items = [batch] if batch.ndim == 3 else list(batch)
  if not items:
    raise ValueError("No images given.")
  for index, image in enumerate(items):
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"Image {index} is {image.dtype} {list(image.shape)}; expected uint8 "
                       "[H, W, 3] RGB. Convert grey, RGBA or 16-bit images first "
                       "(detlab.infer does).")
  return items


def _chunks(images: list, batch_size: int | None, same_shape: bool):
  """Consecutive runs of images, at most batch_size long (None: any), one shape each if
  same_shape (a uint8 tensor batch holds one size)."""
  chunk = []
  for image in images:
    if chunk and ((batch_size and len(chunk) == batch_size) or
                  (same_shape and image.shape != chunk[0].shape)):
      yield chunk
      chunk = []
    chunk.append(image)
  if chunk:
    yield chunk


def _pad_batch(batch: np.ndarray, batch_size: int | None) -> np.ndarray:
  """A static-batch model gets its batch filled with copies of the last image."""
  if batch_size is None or len(batch) == batch_size:
    return batch
  return np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)])


def _od_api_to_result(outputs: dict, count: int) -> dict:
  """OD API outputs (float classes/counts) of a possibly padded batch -> detect()'s dict
  ("box_masks": detection_masks, box-relative, where the model serves them)."""
  result = {"boxes": np.asarray(outputs["detection_boxes"], np.float32)[:count],
            "scores": np.asarray(outputs["detection_scores"], np.float32)[:count],
            "classes": np.asarray(outputs["detection_classes"])[:count].astype(np.int32),
            "num_detections": np.asarray(outputs["num_detections"])[:count].astype(np.int32)}
  if "detection_masks" in outputs:
    result["box_masks"] = np.asarray(outputs["detection_masks"], np.float32)[:count]
  return result


def _concat(results: list[dict]) -> dict:
  return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def _paste_box_masks(result: dict, images: list) -> dict:
  """"box_masks" -> "masks" in each image's pixels (api.paste_masks), as detect gives them."""
  if "box_masks" in result:
    from detlab.api import paste_masks  # pylint: disable=import-outside-toplevel
    result["masks"] = paste_masks(result.pop("box_masks"), result["boxes"],
                                  result["num_detections"], [i.shape[:2] for i in images])
  return result


def read_export_info(export_dir: str) -> dict:
  """An export directory's export.json ({} when there is none)."""
  path = os.path.join(export_dir, "export.json")
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _read_category_names(export_dir: str) -> dict | None:
  """{id: name} from an export directory's export.json, if it records them."""
  names = read_export_info(export_dir).get("category_names")
  return {int(k): v for k, v in names.items()} if names else None


class ModelDirRunner:
  """A training model_dir through detlab.api (its gin config, EMA weights)."""

  def __init__(self, model_dir: str, use_ema: bool = True):
    from detlab import api  # pylint: disable=import-outside-toplevel
    from detlab.export import exporter  # pylint: disable=import-outside-toplevel
    checkpoint = exporter.check_checkpoint(model_dir)
    self._api = api
    self.model = api.load_detector(exporter.model_gin_files(model_dir, ()),
                                   checkpoint=checkpoint, use_ema=use_ema)
    self.category_names = exporter.category_names(api.inference_setup(self.model)[1])

  def __call__(self, images) -> dict:
    return self._api.detect(self.model, as_image_list(images))


class SavedModelRunner:
  """The serving SavedModel's `serving_default`, whatever its --input_type and batch."""

  def __init__(self, path: str):
    self.signature = tf.saved_model.load(path).signatures["serving_default"]
    spec = self.signature.structured_input_signature[1]["input_tensor"]
    self.batch_size = spec.shape[0]
    info = read_export_info(os.path.dirname(path.rstrip("/")))
    self.input_type = ("image_tensor" if spec.dtype == tf.uint8 else
                       info.get("input_type", "encoded_image"))
    self.category_names = _read_category_names(os.path.dirname(path.rstrip("/")))

  def _encode(self, image: np.ndarray):
    encoded = tf.io.encode_png(image).numpy()  # lossless: the model sees the same pixels
    if self.input_type == "tf_example":
      from detlab.data.tf_example import build_example  # pylint: disable=import-outside-toplevel
      encoded = build_example(encoded_image=encoded, image_format="png", source_id="",
                              height=image.shape[0], width=image.shape[1],
                              boxes_yxyx=np.zeros([0, 4]), category_ids=[],
                              category_names=[]).SerializeToString()
    return encoded

  def __call__(self, images) -> dict:
    images = as_image_list(images)
    results = []
    for chunk in _chunks(images, self.batch_size, self.input_type == "image_tensor"):
      if self.input_type == "image_tensor":
        batch = np.stack(chunk)
      else:
        batch = np.array([self._encode(image) for image in chunk], dtype=object)
      outputs = self.signature(input_tensor=tf.constant(_pad_batch(batch, self.batch_size)))
      results.append(_od_api_to_result({k: v.numpy() for k, v in outputs.items()},
                                       len(chunk)))
    return _paste_box_masks(_concat(results), images)


def _letterbox_convention(export_dir: str):
  """The input convention export.json records (its pad colour is the letterbox's); ImageNet
  mean/std for a file without one beside it (exports before the convention was recorded)."""
  from detlab.backbones.conventions import IMAGENET_MEAN_STD, InputConvention  # pylint: disable=import-outside-toplevel
  info = read_export_info(export_dir)
  if "input_mean" not in info:
    logging.warning("No input_mean in %s/export.json: letterboxing with the ImageNet mean.",
                    export_dir)
    return IMAGENET_MEAN_STD
  return InputConvention(mean=tuple(info["input_mean"]), std=tuple(info["input_std"]))


@tf.function(reduce_retracing=True)
def _to_original_pixels(found: dict, image_info):
  """saved_model.to_original_pixels traced (eagerly its ~15 ops cost milliseconds a call)."""
  from detlab.export.saved_model import to_original_pixels  # pylint: disable=import-outside-toplevel
  return to_original_pixels(found, image_info)


class _LetterboxRunner:
  """Shared by LiteRT, OpenVINO and ONNX: letterbox in (tflite.letterbox_uint8, padded with the
  export's input-convention mean), run a static [B, S, S, 3] uint8 model with each image's
  window in its input (boxes wholly in the pad are dropped before NMS), map its boxes back
  to original pixels (to_original_pixels)."""
  batch_size: int | None  # None: any batch
  image_size: int
  category_names: dict | None
  convention: object  # the InputConvention the model was exported with

  def _run(self, batch: np.ndarray, windows: np.ndarray) -> dict:
    """uint8 [B, S, S, 3] letterboxed, windows [B, 4] (where each image lies in its input)
    -> OD API outputs in input pixels."""
    raise NotImplementedError

  _letterbox_fn = None

  def _letterbox(self, image: np.ndarray):
    """tflite.letterbox_uint8, traced once for any image size (eagerly it cost 8.4 ms of a
    480x640 frame, traced 3.9 ms)."""
    if self._letterbox_fn is None:
      from detlab.export.tflite import letterbox_uint8  # pylint: disable=import-outside-toplevel
      size, convention = self.image_size, self.convention
      self._letterbox_fn = tf.function(
          lambda image: letterbox_uint8(image, size, convention),
          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    return self._letterbox_fn(image)

  def __call__(self, images) -> dict:
    results, images = [], as_image_list(images)
    for chunk in _chunks(images, self.batch_size, same_shape=False):
      inputs, infos = [], []
      for image in chunk:
        pixels, scale = self._letterbox(image)
        inputs.append(pixels.numpy())
        infos.append(letterbox_image_info(image.shape[:2], float(scale)))
      infos = np.stack(infos)
      windows = np.concatenate([np.zeros([len(chunk), 2], np.float32), infos[:, 1]], -1)
      outputs = self._run(_pad_batch(np.stack(inputs), self.batch_size),
                          _pad_batch(windows, self.batch_size))
      count = len(chunk)
      # to_original_pixels takes post-processing's class indices; these are category ids.
      found = {"boxes": tf.constant(outputs["detection_boxes"][:count], tf.float32),
               "scores": tf.constant(outputs["detection_scores"][:count], tf.float32),
               "classes": tf.cast(outputs["detection_classes"][:count], tf.int32) - 1,
               "num_detections": tf.cast(outputs["num_detections"][:count], tf.int32)}
      mapped = _to_original_pixels(found, tf.constant(infos))
      if "detection_masks" in outputs:
        mapped["detection_masks"] = outputs["detection_masks"]
      results.append(_drop_empty_boxes(
          _od_api_to_result({k: np.asarray(v) for k, v in mapped.items()}, count)))
    return _paste_box_masks(_concat(results), images)


def _drop_empty_boxes(result: dict) -> dict:
  """detect()'s dict without the rows whose box has no area, the rest moved up, the padding
  zero. The LiteRT graph keeps boxes wholly in the letterbox's pad as zero-area rows (see
  tflite's module doc); they changed no other row, so what remains is the SavedModel's top."""
  out = {k: np.zeros_like(v) for k, v in result.items()}
  boxes = result["boxes"]
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  for i, num in enumerate(result["num_detections"]):
    keep = np.flatnonzero(area[i, :num] > 0)
    for key in ("boxes", "scores", "classes", "box_masks"):
      if key in result:
        out[key][i, :len(keep)] = result[key][i, keep]
    out["num_detections"][i] = len(keep)
  return out


def letterbox_image_info(shape, scale: float) -> np.ndarray:
  """The eval parser's image_info [4, 2] for tflite.letterbox_uint8's resize of an image of
  `shape` (h, w) by `scale`: rows (original size, resized size, per-axis scale = resized /
  original as tfm's resize reports it, offset 0: the letterbox pads bottom/right)."""
  original = np.asarray(shape, np.float32)
  resized = np.round(original * np.float32(scale))  # the size letterbox_uint8 resizes to
  return np.stack([original, resized, resized / original, np.zeros(2, np.float32)])


class TfliteRunner(_LetterboxRunner):
  """A LiteRT file (OUT/model_{fp32,fp16,int8}.tflite) run with ai_edge_litert."""

  def __init__(self, path: str):
    from detlab.export.tflite import signature_runner  # pylint: disable=import-outside-toplevel
    try:
      self.runner = signature_runner(path)
    except ImportError as error:
      raise RunnerError(f"{path} is a LiteRT model; running it needs "
                        "pip install ai-edge-litert (detlab's 'export' extra).") from error
    shape = self.runner.get_input_details()["images"]["shape"]
    self.batch_size, self.image_size = int(shape[0]), int(shape[1])
    self.category_names = _read_category_names(os.path.dirname(path))
    self.convention = _letterbox_convention(os.path.dirname(path))

  def _run(self, batch: np.ndarray, windows: np.ndarray) -> dict:
    return self.runner(images=batch, windows=windows)


class OpenVinoRunner(_LetterboxRunner):
  """An OpenVINO IR (OUT/openvino_{fp32,int8}/model.xml) through openvino.OpenVinoDetector:
  the IR on the CPU plugin, then the TF NMS stored beside it (postprocess.json), then, for a
  mask model, its mask branch (mask.xml) at the detections."""

  def __init__(self, path: str):
    from detlab.export.openvino import OpenVinoDetector  # pylint: disable=import-outside-toplevel
    try:
      self.detector = OpenVinoDetector(path)
    except ImportError as error:  # names the install command
      raise RunnerError(f"{path} is an OpenVINO model: {error}") from error
    self.batch_size, self.image_size = self.detector.batch_size, self.detector.image_size
    export_dir = os.path.dirname(os.path.dirname(path))
    self.category_names = _read_category_names(export_dir)
    self.convention = _letterbox_convention(export_dir)

  def _run(self, batch: np.ndarray, windows: np.ndarray) -> dict:
    return self.detector(batch, windows)


class OnnxRunner(_LetterboxRunner):
  """An ONNX file (OUT/model_{fp32,int8}.onnx) on onnxruntime's CPU provider: the whole
  detector, NMS included, is in the file (onnx.py's module doc)."""

  def __init__(self, path: str):
    from detlab.export import onnx  # pylint: disable=import-outside-toplevel
    try:
      self.session = onnx.inference_session(path)
    except ImportError as error:  # names the install command
      raise RunnerError(f"{path} is an ONNX model: {error}") from error
    self._run_onnx = onnx.run_onnx
    shape = {i.name: i.shape for i in self.session.get_inputs()}["images"]
    self.batch_size = shape[0] if isinstance(shape[0], int) else None  # str: dynamic
    self.image_size = int(shape[1])
    self.category_names = _read_category_names(os.path.dirname(path))
    self.convention = _letterbox_convention(os.path.dirname(path))

  def _run(self, batch: np.ndarray, windows: np.ndarray) -> dict:
    return self._run_onnx(self.session, batch, windows)


def _is_model_dir(path: str) -> bool:
  listed = set(tf.io.gfile.listdir(path))
  has_checkpoint = "checkpoint" in listed or any(n.startswith("ckpt-") for n in listed)
  return has_checkpoint and bool(listed & {"config.gin", "operative_config.gin"})


def exported_formats(output_dir: str) -> dict[str, str]:
  """{format: the path its runner loads} for the formats present in an export OUT directory,
  in the exporter's order (saved_model, LiteRT, OpenVINO, ONNX)."""
  from detlab.export.exporter import FORMATS, output_paths  # pylint: disable=import-outside-toplevel
  found = {}
  for name, member in output_paths(output_dir, FORMATS).items():
    if name.startswith("openvino_"):
      member = os.path.join(member, "model.xml")
    if tf.io.gfile.exists(member):
      found[name] = member
  return found


def load_runner(path: str, use_ema: bool = True):
  """The runner for `path`; see ACCEPTED. use_ema applies to a model_dir only."""
  path = path.rstrip("/") or path
  if path.endswith(".tflite") and tf.io.gfile.exists(path):
    return TfliteRunner(path)
  if path.endswith(".xml") and tf.io.gfile.exists(path):
    return OpenVinoRunner(path)
  if path.endswith(".onnx") and tf.io.gfile.exists(path):
    return OnnxRunner(path)
  if tf.io.gfile.isdir(path):
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      return SavedModelRunner(path)
    if tf.io.gfile.exists(os.path.join(path, "model.xml")):
      return OpenVinoRunner(os.path.join(path, "model.xml"))
    if _is_model_dir(path):
      return ModelDirRunner(path, use_ema)
    member = next(iter(exported_formats(path).values()), None)
    if member:
      logging.info("%s is an export directory; running %s.", path, member)
      return load_runner(member)
  state = "does not exist" if not tf.io.gfile.exists(path) else "is none of them"
  raise RunnerError(f"--model={path} {state}. Accepted: " + "; ".join(ACCEPTED) + ".")
