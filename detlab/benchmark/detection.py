"""Detection gin files (train.task = @DetectionTask()): the network's size
and speed, post-processing, end to end, a training step and optionally the input pipeline."""
import time

import numpy as np
import tensorflow as tf

from detlab.benchmark.report import with_derived_keys
from detlab.benchmark.profile import profile_ops
from detlab.benchmark.timing import (measure_network, time_call, time_train_step,
                                     train_step_call)

ALL = ("params", "gmacs", "matmul_gflops", "infer_img_s_bs1", "infer_img_s_bs8",
       "postprocess_ms", "e2e_img_s_bs1", "train_img_s_bs8")
NETWORK_ONLY = ALL[:5]  # what --backbone measures (no detection post-processing or loss)
INPUT = "input_img_s"   # opt-in: it reads the configured training data


def synthetic_train_batch(model, batch: int, seed: int = 0) -> dict:
  """Random images with targets from random boxes (static shapes, as the pipeline gives)."""
  from detlab.data.source_id import encode_source_id
  from detlab.detection.targets import AnchorTargetAssigner
  rng = np.random.RandomState(seed)
  size = model.anchors.image_size
  assigner = AnchorTargetAssigner(model.anchors)
  cls, box = [], []
  for _ in range(batch):
    centre = rng.uniform(0.2, 0.8, (5, 2)) * size
    half = rng.uniform(0.05, 0.2, (5, 2)) * size
    boxes = np.concatenate([centre - half, centre + half], -1).astype(np.float32)
    c, b = assigner(tf.constant(boxes), tf.constant(rng.randint(0, model.num_classes, 5)))
    cls.append(c)
    box.append(b)
  return {"images": tf.random.normal([batch, size, size, 3]), "cls_targets": tf.stack(cls),
          "box_targets": tf.stack(box),
          "source_ids": encode_source_id(tf.constant([f"synthetic-{i}" for i in range(batch)]))}


def measure_input_pipeline(task, model, batch: int, min_seconds: float,
                           warmup: int = 3) -> float:
  """Images/s of the task's training input pipeline (DetectionTask.train_input through
  `task.train_dataset`, as training builds it) at `batch`: batches drawn after `warmup`
  batches (shuffle buffer and prefetch filled) until `min_seconds` have passed."""
  iterator = iter(task.train_dataset(model, None, batch, None))
  for _ in range(warmup):
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds or count < 3:
    tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
    count += 1
  return count * batch / (time.perf_counter() - start)


def _detector_and_task(precision: str):
  """The detector and DetectionTask `train()` would build (train.task)."""
  from detlab.training.setup import configured_task, precision_policy
  task = configured_task()
  if task.name != "detection":
    raise ValueError(f"The detection benchmark needs a detection gin file; train.task is the "
                     f"{task.name} task (tasks.measure_task measures it).")
  with precision_policy(precision):
    return task.build_model(), task


def measure(wanted, min_seconds: float, train_batch: int = 8,
            precision: str = "float32", profile: bool = False) -> dict:
  """The measurements in `wanted` (ALL and INPUT) of the parsed gin config's detector. The
  training step: detlab's Trainer with the EfficientDet defaults (SGD, weight decay 4e-5,
  clip 10, no EMA), whatever the gin's train.optimizer. `profile`: also "op_profiles",
  {title: [OpTime]} of network inference at batch 8 and 1 and of the training step (when
  measured), the kernel time by op type from a profiler trace (benchmark/profile.py)."""
  from detlab.detection.postprocess import postprocess
  from detlab.training.setup import task_trainer, with_loss_scaling
  from detlab.training.optimizer import OptimizerConfig, build_optimizer
  model, task = _detector_and_task(precision)
  size = model.anchors.image_size
  out = {"model": model.name, "image_size": size, "precision": precision}
  out.update(measure_network(model, size, wanted, min_seconds))
  network = tf.function(lambda x: model(x, training=False))
  profiles = {}
  if profile:
    for batch in (8, 1):
      images = tf.random.normal([batch, size, size, 3])
      profiles[f"network inference, batch {batch} (op type: kernel ms per call)"] = (
          profile_ops(lambda: tf.nest.map_structure(lambda t: t.numpy(), network(images))))
  if "postprocess_ms" in wanted:
    cls, box = model.flatten_outputs(*network(tf.random.normal([1, size, size, 3])))
    anchor_boxes = model.anchors.boxes()
    post = tf.function(lambda c, b: postprocess(c, b, anchor_boxes, size))
    out["postprocess_ms"] = 1000 * time_call(
        lambda: post(cls, box)["num_detections"].numpy(), min_seconds)
  if "e2e_img_s_bs1" in wanted:
    images = tf.random.normal([1, size, size, 3])
    detect = tf.function(lambda x: task.detect(model, x))
    out["e2e_img_s_bs1"] = 1.0 / time_call(
        lambda: detect(images)["num_detections"].numpy(), min_seconds)
  if "train_img_s_bs8" in wanted:
    defaults = OptimizerConfig()
    optimizer, _ = build_optimizer(defaults, train_batch, 10_000, 0)
    trainer = task_trainer(tf.distribute.get_strategy(), task, model,
                           with_loss_scaling(optimizer, precision), defaults, None, False)
    batch = synthetic_train_batch(model, train_batch)
    seconds = time_train_step(trainer, batch, min_seconds)
    out[f"train_img_s_bs{train_batch}"] = train_batch / seconds
    if profile:
      profiles[f"training step, batch {train_batch} (op type: kernel ms per call)"] = (
          profile_ops(train_step_call(trainer, batch), calls=2, warmup=1))
  if INPUT in wanted:
    out[INPUT] = measure_input_pipeline(task, model, train_batch, min_seconds)
    train_key = f"train_img_s_bs{train_batch}"
    if train_key in out:  # the input pipeline should outrun the step several times over
      out["input_over_train"] = out[INPUT] / out[train_key]
  out = with_derived_keys(out)
  if profile:
    out["op_profiles"] = profiles
  return out
