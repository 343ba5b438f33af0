"""Detection gin files (train.task = @DetectionTask(), or @InstanceSegmentationTask(): a
detector with a mask branch): the network's size and speed, post-processing, end to end, a
training step and optionally the input pipeline; for a mask model also the mask branch at
MASK_BOXES detections (its multiply-adds and time, and its share of the network's)."""
import time

import numpy as np
import tensorflow as tf

from detlab.benchmark.report import with_derived_keys
from detlab.benchmark.profile import profile_ops
from detlab.models.instance_segmentation import has_mask_branch
from detlab.benchmark.timing import (measure_network, time_call, time_train_step,
                                     train_step_call)

ALL = ("params", "gmacs", "matmul_gflops", "infer_img_s_bs1", "infer_img_s_bs8",
       "postprocess_ms", "e2e_img_s_bs1", "train_img_s_bs8")
MASK = ("mask_gmacs", "mask_ms_bs1")  # mask models only (in ALL's default for them)
MASK_BOXES = 100  # the recipe's max_detections: the boxes the branch masks per image
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
    boxes = _random_boxes(rng, 5, size)
    c, b = assigner(tf.constant(boxes), tf.constant(rng.randint(0, model.num_classes, 5)))
    cls.append(c)
    box.append(b)
  out = {"images": tf.random.normal([batch, size, size, 3]), "cls_targets": tf.stack(cls),
         "box_targets": tf.stack(box),
         "source_ids": encode_source_id(tf.constant([f"synthetic-{i}" for i in range(batch)]))}
  if has_mask_branch(model):  # mask targets as the input gives them (K rows, -1 pad)
    k, m = 100, model.mask_size
    boxes = np.zeros([batch, k, 4], np.float32)
    boxes[:, :5] = _random_boxes(rng, batch * 5, size).reshape(batch, 5, 4)
    classes = np.full([batch, k], -1, np.int32)
    classes[:, :5] = rng.randint(0, model.num_classes, (batch, 5))
    out.update(mask_boxes=tf.constant(boxes), mask_classes=tf.constant(classes),
               mask_targets=tf.constant((rng.uniform(size=(batch, k, m, m)) > 0.5)
                                        .astype(np.float32)))
  return out


def _random_boxes(rng, count: int, size: int) -> np.ndarray:
  centre = rng.uniform(0.2, 0.8, (count, 2)) * size
  half = rng.uniform(0.05, 0.2, (count, 2)) * size
  return np.concatenate([centre - half, centre + half], -1).astype(np.float32)


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
  """The detector and DetectionTask (or InstanceSegmentationTask) `train()` would build."""
  from detlab.training.setup import configured_task, precision_policy
  task = configured_task()
  if task.name not in ("detection", "instance_segmentation"):
    raise ValueError(f"The detection benchmark needs a detection gin file; train.task is the "
                     f"{task.name} task (tasks.measure_task measures it).")
  with precision_policy(precision):
    return task.build_model(), task


def _measure_mask_branch(model, wanted, min_seconds: float, profiles: dict | None = None) -> dict:
  """The mask branch alone on batch-1 P3..P7 features at MASK_BOXES boxes: multiply-adds
  ("mask_gmacs") and milliseconds ("mask_ms_bs1"); with `profiles` (a dict) also its kernel
  time by node (layer names: RoIAlign, each tower conv, BN, swish, upsampling) added there."""
  from detlab.benchmark.timing import count_gmacs_of  # pylint: disable=import-outside-toplevel
  size = model.anchors.image_size
  _, _, features = model(tf.zeros([1, size, size, 3]), training=False)
  boxes = tf.constant(_random_boxes(np.random.RandomState(0), MASK_BOXES, size)[None])
  classes = tf.zeros([1, MASK_BOXES], tf.int32)
  out = {}
  if "mask_gmacs" in wanted:
    specs = [{k: tf.TensorSpec(v.shape, v.dtype) for k, v in features.items()},
             tf.TensorSpec(boxes.shape, tf.float32)]
    out["mask_gmacs"] = count_gmacs_of(
        lambda f, b: model.mask_logits(f, b, classes, training=False), specs)
  if "mask_ms_bs1" in wanted:
    masks = tf.function(lambda f, b: model.mask_logits(f, b, classes, training=False))
    out["mask_ms_bs1"] = 1000 * time_call(lambda: masks(features, boxes).numpy(), min_seconds)
    if profiles is not None:
      profiles[f"mask branch, batch 1, {MASK_BOXES} boxes (node: kernel ms per call)"] = (
          profile_ops(lambda: masks(features, boxes).numpy(), by="node"))
  return out


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
  if set(MASK) & set(wanted):
    out.update(_measure_mask_branch(model, wanted, min_seconds, profiles if profile else None))
    if "mask_ms_bs1" in out and "infer_img_s_bs1" in out:
      out["mask_over_network_bs1"] = out["mask_ms_bs1"] / (1000.0 / out["infer_img_s_bs1"])
    if "mask_gmacs" in out and "gmacs" in out:
      out["mask_over_network_gmacs"] = out["mask_gmacs"] / out["gmacs"]
  if "postprocess_ms" in wanted:
    cls, box = model.flatten_outputs(*network(tf.random.normal([1, size, size, 3]))[:2])
    anchor_boxes = model.anchors.boxes()
    post = tf.function(lambda c, b: postprocess(c, b, anchor_boxes, size))
    out["postprocess_ms"] = 1000 * time_call(
        lambda: post(cls, box)["num_detections"].numpy(), min_seconds)
  if "e2e_img_s_bs1" in wanted:
    images = tf.random.normal([1, size, size, 3])
    info = tf.constant([[[size, size], [size, size], [1.0, 1.0], [0.0, 0.0]]])
    detect = tf.function(lambda x: task.predict(model, {"images": x, "image_info": info}))
    out["e2e_img_s_bs1"] = 1.0 / time_call(  # network + NMS (+ masks) as served
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
