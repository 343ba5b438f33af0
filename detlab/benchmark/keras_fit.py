"""The reference beside detlab's classifier step: the same network from tf_keras.applications
(weights=None) trained with `model.fit` and the same optimizer (built from the gin's
OptimizerConfig as detlab's is) on the same in-memory batch, timed per step as detlab's.

keras fit's step has no weight decay (keras applications carry no kernel regularizer) and no
EMA; detlab's Trainer step has both (the recipe's), so the comparison is the step each
library's own training runs, not identical arithmetic.
"""
import statistics
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

# detlab backbone name -> tf_keras.applications model of the same architecture.
KERAS_APPLICATIONS = {
    **{f"efficientnet_b{i}": f"EfficientNetB{i}" for i in range(8)},
    **{f"efficientnetv2_b{i}": f"EfficientNetV2B{i}" for i in range(4)},
    "efficientnetv2_s": "EfficientNetV2S", "efficientnetv2_m": "EfficientNetV2M",
    "efficientnetv2_l": "EfficientNetV2L", "inception_v3": "InceptionV3",
    "inception_resnet_v2": "InceptionResNetV2", "xception": "Xception",
}


def keras_application_for(model_name: str) -> str | None:
  """'efficientnet_b0_classifier' (detlab's classifier name) -> 'EfficientNetB0', or None."""
  return KERAS_APPLICATIONS.get(model_name.removesuffix("_classifier"))


class _StepTimer(keras.callbacks.Callback):
  """One step per epoch: epoch durations after `warmup` epochs, until `min_seconds` and at
  least 3 samples (time_call's rule). keras turns the logs to numbers before on_epoch_end,
  so each duration ends after the step has run on the device."""

  def __init__(self, min_seconds: float, warmup: int):
    super().__init__()
    self.min_seconds, self.warmup, self.samples = min_seconds, warmup, []
    self._begin = self._first = None

  def on_epoch_begin(self, epoch, logs=None):
    self._begin = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    now = time.perf_counter()
    if epoch < self.warmup:
      return
    self._first = self._first or self._begin
    self.samples.append(now - self._begin)
    if now - self._first >= self.min_seconds and len(self.samples) >= 3:
      self.model.stop_training = True


def keras_fit_seconds(application: str, optimizer, num_classes: int, image_size: int,
                      batch: int, label_smoothing: float, min_seconds: float,
                      warmup: int = 2, seed: int = 0, jit_compile: bool = False) -> float:
  """Median seconds per `model.fit` step of tf_keras.applications.<application>(weights=None)
  at `batch` x `image_size`^2: softmax cross-entropy on logits with `label_smoothing`,
  `optimizer` (a fresh one, not shared with another model), one step per execution."""
  model = getattr(keras.applications, application)(
      weights=None, input_shape=(image_size, image_size, 3), classes=num_classes,
      classifier_activation=None)
  model.compile(optimizer=optimizer, steps_per_execution=1, jit_compile=jit_compile,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                          label_smoothing=label_smoothing))
  rng = np.random.RandomState(seed)
  images = rng.uniform(0, 255, (batch, image_size, image_size, 3)).astype(np.float32)
  labels = np.eye(num_classes, dtype=np.float32)[rng.randint(0, num_classes, batch)]
  data = tf.data.Dataset.from_tensors((images, labels)).repeat()
  timer = _StepTimer(min_seconds, warmup)
  model.fit(data, epochs=1_000_000, steps_per_epoch=1, verbose=0, callbacks=[timer])
  return statistics.median(timer.samples)
