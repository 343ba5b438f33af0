"""SavedModel export: raw images in, detections in original pixels out (OD API names).

`serving_default` takes, by `input_type`:
  image_tensor   uint8 [B, H, W, 3], any H, W (one size per batch)
  encoded_image  string [B], JPEG/PNG bytes (each its own size)
  tf_example     string [B], serialized tf.Example with OD API keys (`image/encoded`)
under the input name `input_tensor`, and returns
  detection_boxes   float32 [B, D, 4] ymin, xmin, ymax, xmax in each image's original pixels
  detection_scores  float32 [B, D], descending
  detection_classes float32 [B, D] category ids (class index + 1; 0 in the padding)
  num_detections    float32 [B] valid rows per image
and, for an instance-segmentation model (an InstanceSegmenter: a mask branch),
  detection_masks   float32 [B, D, M, M] each detection's mask probabilities relative to its
                    box (the OD API's convention: the box's extent maps onto the M x M grid;
                    paste into the image at > 0.5 with coco_evaluator.paste_mask), 0 in the
                    padding
(float32 classes and counts as the OD API's exporter writes them). Inside: the evaluation
parser's normalise -> aspect-preserving resize -> pad, the model, the model's post-processing
(top-k, decode, NMS) and the mapping back to original pixels, all as TF ops: loading and
running the SavedModel needs TensorFlow only, not detlab.
"""
import dataclasses

import tensorflow as tf

from detlab.backbones import IMAGENET_MEAN_STD, InputConvention, input_convention
from detlab.data.detection_input import DetectionParser, InputConfig
from detlab.data.tf_example import decode_example
from detlab.detection.postprocess import PostprocessConfig, image_windows, postprocess
from detlab.layers.normalization import portable_forms
from detlab.models.instance_segmentation import has_mask_branch, mask_probabilities

INPUT_TYPES = ("image_tensor", "encoded_image", "tf_example")
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
MASK_OUTPUT = "detection_masks"  # added for a model with a mask branch


def input_signature(input_type: str, batch_size: int | None = None) -> tf.TensorSpec:
  if input_type == "image_tensor":
    return tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name="input_tensor")
  if input_type in ("encoded_image", "tf_example"):
    return tf.TensorSpec([batch_size], tf.string, name="input_tensor")
  raise ValueError(f"--input_type must be one of {INPUT_TYPES}, got {input_type!r}.")


class DetectionServing:
  """The serving computation of a (folded) detector as TF functions of raw inputs.

  `convention`: the backbone's input normalisation (default: `input_convention(model)`,
  ImageNet mean/std for an unknown backbone), as training and evaluation use it; every
  exported format normalises (and letterboxes) by it."""

  def __init__(self, model, postprocess_config: PostprocessConfig = PostprocessConfig(),
               input_config: InputConfig = InputConfig(),
               convention: InputConvention | None = None):
    self.model, self.postprocess_config = model, postprocess_config
    self.convention = convention or input_convention(model, default=IMAGENET_MEAN_STD)
    self.parser = DetectionParser(dataclasses.replace(input_config, is_training=False),
                                  model.anchors, model.num_classes, self.convention)
    self.anchor_boxes = model.anchors.boxes()
    self.masks = has_mask_branch(model)

  def preprocess_one(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 [H, W, 3] -> (model input [S, S, 3] float32, image_info [4, 2] float32)."""
    parsed = self.parser.parse({
        "image": image, "boxes": tf.zeros([0, 4]), "classes": tf.zeros([0], tf.int32),
        "is_crowd": tf.zeros([0], tf.bool), "areas": tf.zeros([0]), "source_id": ""})
    return parsed["images"], tf.cast(parsed["image_info"], tf.float32)

  def preprocess(self, images: tf.Tensor, decode=None) -> tuple[tf.Tensor, tf.Tensor]:
    """[B, ...] raw inputs -> ([B, S, S, 3], [B, 4, 2]); `decode` maps one input to uint8."""
    size = self.model.anchors.image_size
    decode = decode or (lambda x: x)
    return tf.map_fn(lambda x: self.preprocess_one(decode(x)), images,
                     fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32),
                                          tf.TensorSpec([4, 2], tf.float32)))

  def detect(self, inputs: tf.Tensor, image_info: tf.Tensor) -> dict:
    """Model inputs [B, S, S, 3] and image_info -> the OD API outputs (see module doc)."""
    outputs = self.model(inputs, training=False)
    class_outputs, box_outputs = outputs[:2]
    cls, box = self.model.flatten_outputs(class_outputs, box_outputs)
    num_anchors = self.model.anchors.num_anchors  # static, for the top-k size (dynamic batch)
    cls.set_shape([None, num_anchors, self.model.num_classes])
    box.set_shape([None, num_anchors, 4])
    size = self.model.anchors.image_size
    found = postprocess(cls, box, self.anchor_boxes, size, self.postprocess_config,
                        image_windows(image_info, size))  # the pad's boxes dropped
    detections = to_original_pixels(found, image_info)
    if self.masks:  # InstanceSegmentationTask.predict's masks: at the boxes in input pixels
      detections[MASK_OUTPUT] = detection_masks(self.model, outputs[2], found)
    return detections

  def serve(self, input_type: str):
    """A function of the raw `input_type` input -> the OD API outputs."""
    decode = {"image_tensor": None, "encoded_image": decode_encoded_image,
              "tf_example": lambda s: decode_example(s)["image"]}[input_type]
    def serve(input_tensor):
      return self.detect(*self.preprocess(input_tensor, decode))
    return serve


def decode_encoded_image(data: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] (grey expanded to RGB, alpha dropped)."""
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def detection_masks(model, features: dict, found: dict) -> tf.Tensor:
  """float32 [B, D, M, M] box-relative mask probabilities of postprocess() output `found`
  (boxes in model-input pixels), 0 in the rows past num_detections: the task's
  predict masks (models.instance_segmentation.mask_probabilities) with the padding zeroed."""
  return mask_probabilities(model, features, found["boxes"], found["classes"],
                            found["num_detections"])


def to_original_pixels(found: dict, image_info: tf.Tensor) -> dict:
  """postprocess() output in model-input pixels -> OD API outputs in original pixels.

  As evaluation maps them: (box + offset) / scale, clipped to the original image."""
  scale = tf.tile(image_info[:, 2, :], [1, 2])[:, None, :]
  offset = tf.tile(image_info[:, 3, :], [1, 2])[:, None, :]
  limit = tf.tile(image_info[:, 0, :], [1, 2])[:, None, :]
  boxes = tf.clip_by_value((found["boxes"] + offset) / scale, 0.0, limit)
  num = found["num_detections"]
  valid = tf.range(tf.shape(found["classes"])[1])[None, :] < num[:, None]
  return {
      "detection_boxes": tf.where(valid[..., None], boxes, 0.0),
      "detection_scores": tf.where(valid, found["scores"], 0.0),
      "detection_classes": tf.cast(tf.where(valid, found["classes"] + 1, 0), tf.float32),
      "num_detections": tf.cast(num, tf.float32),
  }


def serving_module(serving: DetectionServing, input_type: str,
                   batch_size: int | None = None) -> tf.Module:
  """A tf.Module holding the model's variables and the traced `serve` function.

  The keras model itself is not an attribute (only its variables are): tf.saved_model.save
  would otherwise trace every keras layer's call for the keras SavedModel format, which this
  export does not need and the subclassed BiFPN layers (extra call arguments) do not allow.
  """
  module = tf.Module()
  module.model_variables = list(serving.model.variables)
  module.serve = tf.function(serving.serve(input_type),
                             input_signature=[input_signature(input_type, batch_size)])
  return module


@portable_forms()
def export_saved_model(serving: DetectionServing, path: str, input_type: str = "image_tensor",
                       batch_size: int | None = None) -> tf.types.experimental.ConcreteFunction:
  """Writes the SavedModel to `path` (a directory); returns the serving concrete function."""
  module = serving_module(serving, input_type, batch_size)
  concrete = module.serve.get_concrete_function()
  tf.saved_model.save(module, path, signatures={"serving_default": concrete})
  return concrete
