"""Benchmarks of task gin files (`train.task = @ClassificationTask()` / `@SegmentationTask()`):
the model the task builds for training (Task.build_model), its size, multiply-adds and
inference speed, and its training step timed through detlab's Trainer as `train()` builds it
(train_step.py); classification also times the same network from tf_keras.applications
trained with `model.fit` and the same optimizer, side by side (keras_fit.py)."""
import re

import numpy as np
import tensorflow as tf

from detlab.benchmark.report import with_derived_keys
from detlab.benchmark.timing import measure_network, time_train_step
from detlab.benchmark.train_step import build_trainer, optimizer_for_batch
from detlab.training.setup import precision_policy, train_argument

TRAIN, KERAS_FIT = "train_img_s", "keras_fit_img_s"
NETWORK = ("params", "gmacs", "matmul_gflops", "infer_img_s_bs1", "infer_img_s_bs8")
MEASUREMENTS = {"classification": NETWORK + (TRAIN, KERAS_FIT),
                "segmentation": NETWORK + (TRAIN,)}
# The training batch when --train_batch is not given: classification's 32 is issue #12's
# comparison with keras (B0 at 224, batch 32); segmentation's 8 is detection's.
DEFAULT_TRAIN_BATCH = {"classification": 32, "segmentation": 8}


def measurement_name(name: str) -> str:
  """An --only entry -> its measurement: the output keys train_img_s_bs<B> and
  keras_fit_img_s_bs<B> name train_img_s and keras_fit_img_s (B is --train_batch's)."""
  match = re.fullmatch(rf"({TRAIN}|{KERAS_FIT})_bs\d+", name)
  return match.group(1) if match else name


def image_size_of(task, model) -> int:
  """The model's square input size: the segmenter's own, else the task's (classification)."""
  size = getattr(model, "image_size", None) or getattr(task, "image_size", None)
  if not size:
    raise ValueError(f"{type(task).__name__} built {model.name} without a static image size; "
                     "set IMAGE_SIZE in the gin file.")
  return int(size)


def synthetic_batch(task, model, batch: int, size: int, seed: int = 0) -> dict:
  """Random images and labels in the layout the task's training input gives (a
  classification label per image, int32; a segmentation label map per image, uint8)."""
  rng = np.random.RandomState(seed)
  images = tf.constant(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
  if task.name == "classification":
    labels = tf.constant(rng.randint(0, task.num_classes, batch), tf.int32)
  elif task.name == "segmentation":
    labels = tf.constant(rng.randint(0, model.num_classes, (batch, size, size)), tf.uint8)
  else:
    raise ValueError(f"No synthetic training batch for the {task.name!r} task.")
  return {"images": images, "labels": labels}


def measure_task(task, wanted, min_seconds: float, train_batch: int | None = None,
                 precision: str = "float32") -> dict:
  """The measurements in `wanted` (names from MEASUREMENTS[task.name]) of `task`'s model.

  Keys: task, model, image_size, precision, the network's (timing.measure_network), and
  train_img_s_bs<B> with train_step (what detlab's step does); keras_fit_img_s_bs<B> with
  keras_fit_step and detlab_over_keras_fit (classification)."""
  unknown = set(wanted) - set(MEASUREMENTS.get(task.name, ()))
  if unknown:
    raise ValueError(f"The {task.name} benchmark has no {sorted(unknown)}; choose from "
                     f"{MEASUREMENTS.get(task.name, ())}.")
  batch = train_batch or DEFAULT_TRAIN_BATCH[task.name]
  with precision_policy(precision):
    model = task.build_model()
  size = image_size_of(task, model)
  out = {"task": task.name, "model": model.name, "image_size": size, "precision": precision}
  out.update(measure_network(model, size, wanted, min_seconds))
  if TRAIN in wanted:
    trainer, out["train_step"] = build_trainer(task, model, batch, precision)
    seconds = time_train_step(trainer, synthetic_batch(task, model, batch, size), min_seconds)
    out[f"{TRAIN}_bs{batch}"] = batch / seconds
  if KERAS_FIT in wanted:
    out.update(_keras_fit(task, model, batch, size, precision, min_seconds))
    if f"{TRAIN}_bs{batch}" in out:
      out["detlab_over_keras_fit"] = out[f"{TRAIN}_bs{batch}"] / out[f"{KERAS_FIT}_bs{batch}"]
  return with_derived_keys(out)


def _keras_fit(task, model, batch, size, precision, min_seconds) -> dict:
  from detlab.benchmark.keras_fit import KERAS_APPLICATIONS, keras_application_for, \
      keras_fit_seconds
  from detlab.benchmark.train_step import describe_optimizer
  application = keras_application_for(model.name)
  if application is None:
    raise ValueError(f"tf_keras.applications has no counterpart of {model.name}; keras_fit "
                     f"covers {sorted(KERAS_APPLICATIONS)}: leave it out of --only.")
  _, optimizer = optimizer_for_batch(batch)  # a fresh one: slots are per model
  with precision_policy(precision):  # keras compile adds loss scaling for mixed_float16
    seconds = keras_fit_seconds(application, optimizer, task.num_classes, size, batch,
                                task.label_smoothing, min_seconds,
                                jit_compile=bool(train_argument("jit_compile", False)))
  return {f"{KERAS_FIT}_bs{batch}": batch / seconds,
          "keras_fit_step": f"tf_keras.applications.{application} model.fit: "
                            f"{describe_optimizer(optimizer)}, no weight decay, no EMA"}
