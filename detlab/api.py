"""The Python API: a gin-configured detector with weights, and detection on raw images.

  model = detlab.api.load_detector(["efficientdet_d0.gin"], checkpoint="/path/model_dir")
  out = detlab.api.detect(model, [image_uint8, ...])   # boxes in each image's own pixels

`load_detector` builds the detector of the gin config's task exactly as training does and loads a
detlab checkpoint (a model_dir or a ckpt prefix; EMA weights by default) or a google/automl
EfficientDet checkpoint. `detect` runs the model's own evaluation preprocessing (the eval
input pipeline's normalise -> aspect-preserving resize -> pad) and post-processing (top-k,
decode, NMS), and maps boxes back to original pixels as evaluation does. An instance-
segmentation config (instance_segmentation_*.gin) builds the detector with its mask branch,
and `detect` also returns each detection's mask in its image's pixels.
"""
import contextlib
import dataclasses
import weakref
from typing import Sequence

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from detlab import config
from detlab.backbones import IMAGENET_MEAN_STD, input_convention
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig
from detlab.evaluation.coco_evaluator import paste_mask
from detlab.models.instance_segmentation import has_mask_branch
from detlab.tasks.detection import DetectionTask
from detlab.tasks.instance_segmentation import InstanceSegmentationTask
from detlab.training.ema import WeightAverage, averaged_variables
from detlab.training.setup import configured_task
from detlab.weights.automl_checkpoint import is_automl_checkpoint, load_automl_checkpoint

@dataclasses.dataclass
class _Inference:
  """What detlab.api keeps for one model: the eval InputConfig and DetectionTask that detect()
  uses, the gin configuration text load_detector built it from (None for a model built
  elsewhere), its own traced predict (one per model, never shared) and the task whose predict
  that is: the DetectionTask, or the InstanceSegmentationTask wrapping it (mask models)."""
  eval_input: InputConfig
  task: DetectionTask
  config_text: str | None = None
  predict: object = None
  predict_task: object = None

  def __post_init__(self):
    self.predict_task = self.predict_task or self.task


# model -> _Inference, filled by load_detector or on a model's first detect.
_MODELS = weakref.WeakKeyDictionary()


def _inference(model) -> _Inference:
  if model not in _MODELS:  # a model not made by load_detector: the recipe's defaults
    task = DetectionTask(DetectionLoss(), PostprocessConfig())
    _MODELS[model] = _Inference(InputConfig(), task, predict_task=InstanceSegmentationTask(
        task) if has_mask_branch(model) else task)
  return _MODELS[model]


@contextlib.contextmanager
def isolated_gin_config():
  """Inside: an empty gin configuration (bindings, macros, imports, singletons, operative
  config); on exit, whatever happened inside, the configuration from before is back. gin
  has no public save/restore, so its module-level state is copied and put back."""
  # pylint: disable=protected-access
  state = gin.config
  saved = ({k: dict(v) for k, v in state._CONFIG.items()}, dict(state._SINGLETONS),
           set(state._IMPORTS), dict(state._OPERATIVE_CONFIG), state.config_is_locked())
  gin.clear_config()
  try:
    yield
  finally:
    bindings, singletons, imports, operative, locked = saved
    gin.clear_config()
    state._CONFIG.update(bindings)
    state._SINGLETONS.update(singletons)
    state._IMPORTS.update(imports)
    with state._OPERATIVE_CONFIG_LOCK:
      state._OPERATIVE_CONFIG.update(operative)
    state._set_config_is_locked(locked)


def detector_config(model) -> str:
  """The gin configuration text (gin.config_str()) load_detector built `model` from: what a
  model_dir's config.gin holds to rebuild it."""
  text = _MODELS[model].config_text if model in _MODELS else None
  if text is None:
    raise ValueError("detector_config: this model was not built by detlab.api.load_detector.")
  return text


class CheckpointLoadError(ValueError):
  """A checkpoint cannot be loaded into the configured detector (says why and what to do)."""


def load_detector(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                  checkpoint: str | None = None, use_ema: bool = True):
  """Builds the detector that `train()` would train from gin files (names in gin_configs/
  or paths) and bindings (`train.task = @DetectionTask()`, as every efficientdet_*.gin, or
  `@InstanceSegmentationTask()`, as every instance_segmentation_*.gin: the detector with its
  mask branch, an InstanceSegmenter).

  The files are parsed into a fresh gin configuration, so each call sees only its own files,
  and the caller's configuration is restored afterwards (isolated_gin_config); the
  detector's own configuration text is `detector_config(model)`.
  checkpoint: None (fresh initialisation); a detlab model_dir (its latest checkpoint) or
    checkpoint prefix; or a google/automl EfficientDet checkpoint (directory or prefix).
  use_ema: load the exponential-moving-average weights when the checkpoint holds them (the
    weights evaluation reports); False loads the raw training weights.
  Returns the built EfficientDet; `model(images, training=False)` gives
  (class_outputs, box_outputs) per level, images ImageNet-normalised [B, S, S, 3].
  """
  with isolated_gin_config():
    config.parse_gin(list(gin_files), list(gin_bindings))
    try:
      task = configured_task()
    except ValueError as error:
      raise ValueError(f"The gin files {list(gin_files)} configure no detector: {error}") \
          from error
    if not isinstance(task, (DetectionTask, InstanceSegmentationTask)):
      raise ValueError(f"The gin files {list(gin_files)} configure a {task.name} task, not "
                       "a detector; include a detector file such as 'efficientdet_d0.gin' "
                       "(or 'instance_segmentation_d0.gin' for one with masks).")
    model = task.build_model()
    config_text = gin.config_str()
  detection = task.detection if isinstance(task, InstanceSegmentationTask) else task
  # Raw images have no ground-truth masks to decode (the serving parser is the eval one).
  eval_input = dataclasses.replace(detection.eval_input or InputConfig(), is_training=False,
                                   instance_masks=None)
  _MODELS[model] = _Inference(eval_input, detection, config_text, predict_task=task)
  if checkpoint:
    load_weights(model, checkpoint, use_ema)
  return model


def _latest(path: str) -> str:
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointLoadError(f"No checkpoint in directory {path}: point `checkpoint` at a "
                                "detlab model_dir, a ckpt-N prefix or an automl checkpoint.")
    return latest
  return path


def load_weights(model, checkpoint: str, use_ema: bool = True) -> str:
  """Loads a detlab checkpoint (model_dir or prefix) or a google/automl EfficientDet
  checkpoint (directory or prefix) into `model`; returns the prefix used.

  With use_ema the checkpoint's EMA shadows replace the weights they average (trainable
  variables and BN moving statistics); a checkpoint without EMA loads its raw weights.
  """
  if is_automl_checkpoint(checkpoint):
    return load_automl_checkpoint(model, checkpoint, use_ema)["checkpoint"]
  path = _latest(checkpoint)
  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as error:
    raise CheckpointLoadError(f"Checkpoint {checkpoint!r} cannot be read: {error}") from error
  if not reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
    raise CheckpointLoadError(f"{path} is a name-based (TF1) checkpoint but not a google/automl "
                              "EfficientDet one; detlab loads those and its own.")
  try:
    tf.train.Checkpoint(model=model).restore(path).assert_existing_objects_matched() \
        .expect_partial()
  except (AssertionError, ValueError) as error:
    raise CheckpointLoadError(
        f"Checkpoint {path} does not fit the configured model: {error}\nLoad it with the gin "
        "files and bindings that trained it (its model_dir holds operative_config.gin).") \
        from error
  has_ema = any(k.startswith("ema/") for k in reader.get_variable_to_shape_map())
  if use_ema and has_ema:
    average = WeightAverage(model)
    tf.train.Checkpoint(ema=average.shadows).restore(path).assert_existing_objects_matched() \
        .expect_partial()
    for shadow, variable in zip(average.shadows, averaged_variables(model)):
      variable.assign(shadow)  # the model now holds the averages
    logging.info("Loaded %s (EMA weights).", path)
  else:
    if use_ema:
      logging.warning("%s holds no EMA weights; loaded its raw weights.", path)
    logging.info("Loaded %s (raw weights).", path)
  return path


def _as_image_list(images) -> list[tf.Tensor]:
  if isinstance(images, (list, tuple)):
    items = [tf.convert_to_tensor(i) for i in images]
  else:
    batch = tf.convert_to_tensor(images)
    items = [batch] if batch.shape.rank == 3 else list(tf.unstack(batch))
  if not items:
    raise ValueError("detect: no images given.")
  for index, image in enumerate(items):
    if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
      raise ValueError(f"detect: image {index} is {image.dtype.name} {image.shape.as_list()}; "
                       "expected uint8 [H, W, 3] RGB (a list of such, or a [B, H, W, 3] "
                       "batch). Convert grey or RGBA images to RGB first.")
  return items


def preprocess(model, images) -> tuple[tf.Tensor, tf.Tensor]:
  """uint8 images (list of [H, W, 3] or a batch) -> (model inputs [B, S, S, 3] float32,
  image_info [B, 4, 2]: [[orig h, w], [scaled h, w], [scale y, x], [offset y, x]]),
  through the eval input pipeline's own parser (the backbone's input normalisation, the
  aspect-preserving resize and the bottom/right pad)."""
  eval_input, _ = inference_setup(model)
  # The backbone's input convention, as training and evaluation use it (experiment.py).
  parser = DetectionParser(eval_input, model.anchors, model.num_classes,
                           input_convention(model, default=IMAGENET_MEAN_STD))
  parsed = [parser.parse({
      "image": image, "boxes": tf.zeros([0, 4]), "classes": tf.zeros([0], tf.int32),
      "is_crowd": tf.zeros([0], tf.bool), "areas": tf.zeros([0]), "source_id": ""})
            for image in _as_image_list(images)]
  return (tf.stack([p["images"] for p in parsed]),
          tf.stack([tf.cast(p["image_info"], tf.float32) for p in parsed]))


def inference_setup(model) -> tuple[InputConfig, DetectionTask]:
  """(eval InputConfig, DetectionTask) that `detect` uses for `model`: the gin config's when
  load_detector built it (for an instance-segmentation model, the DetectionTask its
  InstanceSegmentationTask wraps: post-processing, label map)."""
  record = _inference(model)
  return record.eval_input, record.task


def detect(model, images) -> dict:
  """Detections for uint8 RGB images of any size: a list of [H, W, 3] or a [B, H, W, 3] batch.

  Returns numpy arrays, D = the post-processing's max_detections (100 in the recipe):
    "boxes" [B, D, 4] ymin, xmin, ymax, xmax in each image's original pixels,
    "scores" [B, D] (sorted, descending), "classes" [B, D] int32 category ids (class index
    + 1; 0 in the padding), "num_detections" [B] int32 (valid rows per image).
  A model with a mask branch (has_mask_branch) also gives
    "masks": uint8 0/1 [D, H, W] per image, in that image's own pixels (the predicted
    box-relative M x M probabilities pasted into the box at > 0.5 by
    coco_evaluator.paste_mask, as COCO mask evaluation pastes them; zeros in the padding
    rows): a numpy array [B, D, H, W] when `images` is one array (an image or a batch), a
    list of B arrays [D, H_i, W_i] when it is a list (images may differ in size). Memory:
    D x H x W bytes per image (100 x 640 x 480: 31 MB).
  """
  inputs, image_info = preprocess(model, images)
  record = _inference(model)
  if record.predict is None:
    # A weak reference: a value that held the model would keep its WeakKeyDictionary key
    # (and every model detect() ever saw) alive.
    model_ref, task = weakref.ref(model), record.predict_task
    record.predict = tf.function(lambda features: task.predict(model_ref(), features))
  detections = {k: v.numpy() for k, v in record.predict(
      {"images": inputs, "image_info": image_info}).items()}
  valid = np.arange(detections["classes"].shape[1])[None, :] < \
      detections["num_detections"][:, None]
  detections["classes"] = np.where(valid, detections["classes"] + 1, 0).astype(np.int32)
  detections["boxes"] = np.where(valid[..., None], detections["boxes"], 0.0)
  if "masks" in detections:
    sizes = image_info[:, 0].numpy().astype(np.int64)  # each image's original (h, w)
    pasted = paste_masks(detections["masks"], detections["boxes"],
                         detections["num_detections"], sizes)
    detections["masks"] = pasted if isinstance(images, (list, tuple)) else np.stack(pasted)
  return detections


def paste_masks(box_masks, boxes, num_detections, sizes) -> list[np.ndarray]:
  """Box-relative mask probabilities [B, D, M, M] (predict's "masks", the SavedModel's
  detection_masks) at boxes [B, D, 4] y1 x1 y2 x2 in original pixels -> a list of B uint8
  0/1 arrays [D, h, w] ((h, w) = sizes[i]), each valid row pasted by
  coco_evaluator.paste_mask (> 0.5), the rows past num_detections 0."""
  pasted = []
  for i, (height, width) in enumerate(np.asarray(sizes).reshape(-1, 2)):
    masks = np.zeros([box_masks.shape[1], int(height), int(width)], np.uint8)
    for k in range(int(num_detections[i])):
      masks[k] = paste_mask(box_masks[i, k], boxes[i, k], int(height), int(width))
    pasted.append(masks)
  return pasted
