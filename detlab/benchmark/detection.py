r"""Speed and size of a gin-configured detector on this machine.

  python -m detlab.benchmark --gin_file=efficientdet_d0.gin [--json] [--only=params,gmacs]
  python -m detlab.benchmark --backbone=efficientnet_b0 --only=params,gmacs,infer_img_s_bs1
  python -m detlab.benchmark --gin_file=efficientdet_d0.gin --input_pipeline \
      --gin_bindings="TRAIN_FILE_PATTERN='data/shapes/train-*.tfrecord'"

Reports parameters, FLOPs (multiply-adds, TF profiler on the traced network, batch 1),
network-only inference images/s at batch 1 and 8, end-to-end (network + post-processing)
images/s at batch 1, post-processing ms per image, a training step's images/s at batch 8, and
an fp32 matmul peak measured in the same run with the fraction of it the network achieves.
--input_pipeline (or `input_img_s` in --only) also times the gin config's training input
pipeline (train.train_input: its source and training transforms at the model's image size)
in images/s at the training batch, printed beside the training step's images/s.
"""
import json
import os
import statistics
import time

from absl import app, flags
import gin
import numpy as np
import tensorflow as tf

from detlab import config

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", ["efficientdet_d0.gin"], "Model gin file(s).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_list("only", [], "Subset of measurements (e.g. params,gmacs).")
flags.DEFINE_float("seconds", 5.0, "Minimum timed seconds per measurement.")
flags.DEFINE_integer("train_batch", 8, "Batch size of the training-step measurement.")
flags.DEFINE_string("backbone", None, "Measure this registered backbone's classifier "
                    "(include_top=True) instead of the gin detector, e.g. efficientnetv2_s.")
flags.DEFINE_bool("input_pipeline", False, "Also time the training input pipeline "
                  "(train.train_input) beside the training step: adds input_img_s and "
                  "train_img_s_bs8 to the measurements.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy of the measured model (train.precision's choices).")
flags.DEFINE_integer("image_size", 0, "Classifier image size for --backbone (0: the variant's "
                     "native resolution).")

ALL = ("params", "gmacs", "matmul_gflops", "infer_img_s_bs1", "infer_img_s_bs8",
       "postprocess_ms", "e2e_img_s_bs1", "train_img_s_bs8")
NETWORK_ONLY = ALL[:5]  # what --backbone measures (no detection post-processing or loss)
INPUT = "input_img_s"   # opt-in: it reads the configured training data


def time_call(fn, min_seconds: float, warmup: int = 2) -> float:
  """Median seconds per call over repeated timed runs (after warm-up calls)."""
  for _ in range(warmup):
    fn()
  samples, start = [], time.perf_counter()
  while time.perf_counter() - start < min_seconds or len(samples) < 3:
    t0 = time.perf_counter()
    fn()
    samples.append(time.perf_counter() - t0)
  return statistics.median(samples)


def count_gmacs(model, image_size: int) -> float:
  """Multiply-adds (billions) at batch 1 = TF profiler float ops of the traced network / 2.

  The graph is frozen (variables -> constants, nested functions inlined) only when it calls
  nested functions, which the profiler does not descend into; otherwise the trace is profiled
  as it is: the same count (checked on D0 and D3) without the cost of copying every weight.
  """
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import
  from detlab.layers.normalization import stock_inference_form
  fn = tf.function(lambda x: model(x, training=False))
  with stock_inference_form():
    concrete = fn.get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
  graph = concrete.graph
  if any(op.type in ("PartitionedCall", "StatefulPartitionedCall")
         for op in graph.get_operations()):
    graph = convert_to_constants.convert_variables_to_constants_v2(concrete).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
  return profile.total_float_ops / 2.0 / 1e9


def matmul_gflops(min_seconds: float, n: int = 2048) -> float:
  a = tf.random.normal([n, n])
  b = tf.random.normal([n, n])
  fn = tf.function(lambda: tf.matmul(a, b))
  seconds = time_call(lambda: fn().numpy(), min_seconds)
  return 2.0 * n ** 3 / seconds / 1e9


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


def measure_input_pipeline(model, batch: int, min_seconds: float, warmup: int = 3) -> float:
  """Images/s of make_dataset(train.train_input) at `batch`: batches drawn after `warmup`
  batches (shuffle buffer and prefetch filled) until `min_seconds` have passed."""
  from detlab.data.detection_input import make_dataset
  reference = gin.query_parameter("train.train_input")
  train_input = reference.scoped_configurable_fn()
  iterator = iter(make_dataset(train_input, model.anchors, model.num_classes, batch))
  for _ in range(warmup):
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds or count < 3:
    tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
    count += 1
  return count * batch / (time.perf_counter() - start)


def measure(wanted, min_seconds: float, train_batch: int, precision: str = "float32") -> dict:
  from detlab.detection.losses import DetectionLoss
  from detlab.detection.postprocess import PostprocessConfig, postprocess
  from detlab.tasks.detection import DetectionTask
  from detlab.training.loop import Trainer
  from detlab.training.experiment import precision_policy, with_loss_scaling
  from detlab.training.optimizer import OptimizerConfig, build_optimizer
  model_fn = gin.query_parameter("train.model_fn").scoped_configurable_fn
  with precision_policy(precision):
    model = model_fn()
  size = model.anchors.image_size
  out = {"model": model.name, "image_size": size, "precision": precision}
  out.update(measure_network(model, size, wanted, min_seconds))
  network = tf.function(lambda x: model(x, training=False))
  task = DetectionTask(model, DetectionLoss(), PostprocessConfig())
  if "postprocess_ms" in wanted:
    cls, box = model.flatten_outputs(*network(tf.random.normal([1, size, size, 3])))
    post = tf.function(lambda c, b: postprocess(c, b, task.anchor_boxes, size))
    out["postprocess_ms"] = 1000 * time_call(
        lambda: post(cls, box)["num_detections"].numpy(), min_seconds)
  if "e2e_img_s_bs1" in wanted:
    images = tf.random.normal([1, size, size, 3])
    out["e2e_img_s_bs1"] = 1.0 / time_call(
        lambda: task.detect(images)["num_detections"].numpy(), min_seconds)
  if "train_img_s_bs8" in wanted:
    strategy = tf.distribute.get_strategy()
    optimizer, _ = build_optimizer(OptimizerConfig(), train_batch, 10_000, 0)
    optimizer = with_loss_scaling(optimizer, precision)
    trainer = Trainer(strategy, model, optimizer, task.compute_loss, 4e-5, 10.0)
    batch = synthetic_train_batch(model, train_batch)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    steps = tf.constant(1)
    seconds = time_call(lambda: (trainer.train_steps(iterator, steps),
                                 trainer.metrics["total"].result().numpy()), min_seconds)
    out[f"train_img_s_bs{train_batch}"] = train_batch / seconds
  if INPUT in wanted:
    out[INPUT] = measure_input_pipeline(model, train_batch, min_seconds)
    train_key = f"train_img_s_bs{train_batch}"
    if train_key in out:  # the input pipeline should outrun the step several times over
      out["input_over_train"] = out[INPUT] / out[train_key]
  return _with_derived_keys(out)


def measure_network(model, size: int, wanted, min_seconds: float) -> dict:
  """Parameters, multiply-adds, matmul peak and network-only images/s at batch 1 and 8."""
  out = {}
  if "params" in wanted:
    out["params"] = int(model.count_params())
  if "gmacs" in wanted:
    out["gmacs"] = count_gmacs(model, size)
  if "matmul_gflops" in wanted:
    out["matmul_gflops"] = matmul_gflops(min_seconds)
  network = tf.function(lambda x: model(x, training=False))
  for batch in (1, 8):
    key = f"infer_img_s_bs{batch}"
    if key in wanted:
      images = tf.random.normal([batch, size, size, 3])
      out[key] = batch / time_call(lambda: tf.nest.map_structure(
          lambda t: t.numpy(), network(images)), min_seconds)
  return out


# CPU features that change which kernels TF picks (oneDNN's default, native bf16 arithmetic).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def machine_description() -> str:
  """What the timings were measured on: CPU model, cores, the ISA flags that matter, GPUs and
  the oneDNN setting; timings from machines that differ here are not comparable."""
  model, flags_present = "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
          model = value.strip()
        elif key.strip() == "flags" and not flags_present:
          flags_present = set(value.split())
  except OSError:  # not Linux: the model name stays unknown
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  isa = " ".join(f for f in _CPU_FLAGS if f in flags_present) or "flags unknown"
  gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
  onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TF default")
  return (f"{model}, {cores} cores, {isa}; GPUs: {', '.join(gpus) or 'none'}; "
          f"TF_ENABLE_ONEDNN_OPTS={onednn}")


def _with_derived_keys(out: dict) -> dict:
  """Adds the fraction of the matmul peak and, when anything was timed, the machine."""
  if "gmacs" in out and "matmul_gflops" in out and "infer_img_s_bs8" in out:
    out["fraction_of_matmul_peak_bs8"] = (
        2 * out["gmacs"] * out["infer_img_s_bs8"] / out["matmul_gflops"])
  if any("img_s" in key or key.endswith("_ms") or key == "matmul_gflops" for key in out):
    out["machine"] = machine_description()
  return out


def native_classifier_size(backbone: str) -> int:
  """The paper's evaluation size of a registered classifier: EfficientNet V1/V2 per variant
  ('efficientnet_b3' -> 300), otherwise the family module's NATIVE_SIZE (224 or 299)."""
  import importlib
  from detlab.backbones import BACKBONES, efficientnet, efficientnet_v2
  family, _, variant = backbone.partition("_")
  modules = {"efficientnet": efficientnet, "efficientnetv2": efficientnet_v2}
  if family in modules:
    return modules[family].native_resolution(variant)
  size = getattr(importlib.import_module(BACKBONES[backbone].__module__), "NATIVE_SIZE",
                 None) if backbone in BACKBONES else None
  if size is None:
    raise app.UsageError(f"No native resolution known for {backbone!r}: pass --image_size.")
  return size


def measure_backbone(name: str, wanted, min_seconds: float, image_size: int = 0) -> dict:
  """`measure_network` for a registered backbone's classifier (1000 classes) at `image_size`."""
  from detlab.backbones import BACKBONES
  if name not in BACKBONES:
    raise app.UsageError(f"Unknown --backbone {name!r}; choose from {sorted(BACKBONES)}.")
  size = image_size or native_classifier_size(name)
  model = BACKBONES[name](include_top=True, input_shape=(size, size, 3))
  out = {"model": model.name, "image_size": size}
  out.update(measure_network(model, size, wanted, min_seconds))
  return _with_derived_keys(out)


def format_table(result: dict) -> str:
  units = {"params": "", "gmacs": "G multiply-adds", "matmul_gflops": "GFLOP/s fp32",
           "postprocess_ms": "ms/image", "fraction_of_matmul_peak_bs8": "of matmul peak",
           "input_over_train": "x the training step"}
  lines = []
  for key, value in result.items():
    text = f"{value:,}" if isinstance(value, int) else (
        f"{value:.3f}" if isinstance(value, float) else str(value))
    unit = units.get(key, "images/s" if "img_s" in key else "")
    lines.append(f"{key:30s} {text:>14s} {unit}")
  return "\n".join(lines)


def main(argv):
  del argv
  choices = NETWORK_ONLY if FLAGS.backbone else ALL + (INPUT,)
  wanted = set(FLAGS.only) or set(NETWORK_ONLY if FLAGS.backbone else ALL)
  if FLAGS.input_pipeline and not FLAGS.backbone:
    wanted |= {INPUT, "train_img_s_bs8"}
  unknown = wanted - set(choices)
  if unknown:
    raise app.UsageError(f"Unknown --only entries {sorted(unknown)}; choose from {choices}.")
  if FLAGS.backbone:
    result = measure_backbone(FLAGS.backbone, wanted, FLAGS.seconds, FLAGS.image_size)
  else:
    config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
    result = measure(wanted, FLAGS.seconds, FLAGS.train_batch, FLAGS.precision)
  print(json.dumps(result) if FLAGS.json else format_table(result), flush=True)


if __name__ == "__main__":
  app.run(main)
