"""What input a backbone's weights expect: per-channel (pixel - mean) / std, and its native size.

Pixels are RGB in 0..255. The conventions of the published weights detlab imports:
- ImageNet mean/std (x 255): google/automl EfficientDet and EfficientNet; keras EfficientNet V1
  (its in-model `Rescaling(1/255)` + `Normalization` with the published statistics) and keras
  EfficientNetV2-B0..B3 (`Rescaling(1/255)` + `Normalization(ImageNet mean, std**2)`).
- [-1, 1] as x / 127.5 - 1: keras `preprocess_input` (mode 'tf') of Inception v3,
  Inception-ResNet v2 and Xception; TF-slim's inception preprocessing ((x / 255 - 0.5) * 2).
- [-1, 1] as x / 128 - 1: keras EfficientNetV2-S/M/L (`Rescaling(1/128, offset=-1)`).
- (x - 127) / 128: EfficientNet-Lite (the TPU repo's efficientnet_lite_builder MEAN_RGB /
  STDDEV_RGB) and google/automl's EfficientDet-Lite (`mean_rgb=127.0, stddev_rgb=128.0`),
  chosen there for post-training quantization.
The table of which backbone takes which is `detlab.backbones.INPUT_CONVENTIONS`.
"""
import dataclasses

import numpy as np
import tensorflow as tf
from official.vision.ops import preprocess_ops


@dataclasses.dataclass(frozen=True)
class InputConvention:
  """(pixel - mean) / std per RGB channel, pixels in 0..255; `native_size` is the classifier's
  evaluation resolution; `source` names who defines the convention."""
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  native_size: int | None = None
  source: str = ""

  def at_size(self, native_size: int) -> "InputConvention":
    return dataclasses.replace(self, native_size=native_size)

  @property
  def value_range(self) -> tuple[float, float]:
    """(lowest, highest) normalized value over the channels, for pixel values 0 and 255."""
    lows = [(0.0 - m) / s for m, s in zip(self.mean, self.std)]
    highs = [(255.0 - m) / s for m, s in zip(self.mean, self.std)]
    return min(lows), max(highs)

  def normalize(self, image: tf.Tensor) -> tf.Tensor:
    """uint8 (or float 0..255) image(s) [..., 3] -> float32 normalized.

    Integer images go through tfm's `normalize_image` (to [0, 1], then mean/255 and std/255),
    which keeps the ImageNet path bit-identical to the reference-style pipeline."""
    offset = [m / 255.0 for m in self.mean]
    scale = [s / 255.0 for s in self.std]
    image = tf.convert_to_tensor(image)
    if image.dtype.is_integer:
      return preprocess_ops.normalize_image(image, offset=offset, scale=scale)
    return preprocess_ops.normalize_scaled_float_image(
        tf.cast(image, tf.float32) / 255.0, offset, scale)

  def denormalize(self, image: tf.Tensor) -> tf.Tensor:
    """The inverse of `normalize`: float32 pixels 0..255 (not clipped)."""
    return tf.cast(image, tf.float32) * tf.constant(self.std) + tf.constant(self.mean)

  def to_uint8(self, images) -> np.ndarray:
    """Normalized image(s) [..., 3] (tensor or numpy, eager) -> numpy uint8 pixels to draw or
    save: `denormalize`, rounded and clipped to 0..255."""
    return np.clip(np.rint(self.denormalize(images).numpy()), 0, 255).astype(np.uint8)

  @property
  def mean_pixel(self) -> tuple[int, int, int]:
    """The uint8 colour nearest the mean: what `normalize` takes closest to 0, so the fill of
    canvas that no image covers (within 0.5 / std of 0: 127.5 cannot be a uint8)."""
    return tuple(int(np.clip(np.rint(m), 0, 255)) for m in self.mean)


IMAGENET_MEAN_STD = InputConvention(
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255), std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    source="ImageNet mean/std (google/automl EfficientDet/EfficientNet, keras EfficientNet)")
MINUS_ONE_TO_ONE = InputConvention(
    mean=(127.5,) * 3, std=(127.5,) * 3,
    source="[-1, 1] = x / 127.5 - 1 (keras preprocess_input mode 'tf', TF-slim inception)")
MINUS_ONE_TO_ONE_V2 = InputConvention(
    mean=(128.0,) * 3, std=(128.0,) * 3,
    source="x / 128 - 1 (keras EfficientNetV2-S/M/L in-model Rescaling)")
EFFICIENTNET_LITE = InputConvention(
    mean=(127.0,) * 3, std=(128.0,) * 3,
    source="(x - 127) / 128 (EfficientNet-Lite, google/automl EfficientDet-Lite)")
