"""The configurable root, `train(...)`: strategy -> model -> inputs -> loop -> evaluation.

Everything that creates variables is built inside `strategy.scope()` from uncalled factories.
"""
import dataclasses
import math
import os
import time

from absl import logging
import gin
import tensorflow as tf
from official.common import distribute_utils

from detlab.data.detection_input import InputConfig, make_dataset
from detlab.detection.losses import DetectionLoss
from detlab.detection.postprocess import PostprocessConfig
from detlab.evaluation.coco_evaluator import format_metrics, save_metrics
from detlab.tasks.detection import DetectionTask, load_category_names
from detlab.training.checkpoint import CheckpointKeeper
from detlab.training.loop import Trainer, run_training
from detlab.training.optimizer import OptimizerConfig, build_optimizer

MODES = ("train", "eval", "train_and_eval")


@gin.register(module="detlab.training")
@dataclasses.dataclass(frozen=True)
class Schedule:
  """How long and how often. Steps derive from epochs unless `train_steps` is set."""
  batch_size: int = 128               # global batch
  epochs: float = 300.0
  num_train_images: int = 117266      # COCO train2017 images with annotations
  train_steps: int | None = None
  steps_per_loop: int = 100
  log_every_steps: int = 100
  checkpoint_every_steps: int = 2000

  @property
  def total_steps(self) -> int:
    if self.train_steps:
      return self.train_steps
    return int(math.ceil(self.epochs * self.num_train_images / self.batch_size))

  def steps_for_epochs(self, epochs: float) -> int:
    return int(round(epochs * self.num_train_images / self.batch_size))


def get_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
  """'off' (default strategy), 'one_device', 'mirrored', 'multi_worker_mirrored', 'tpu'."""
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=name, num_gpus=len(tf.config.list_physical_devices("GPU")),
      tpu_address=tpu)


def _write_text(path: str, text: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


@gin.configurable(denylist=["model_dir", "mode"])
def train(model_dir: str, mode: str = "train_and_eval", *, model_fn=gin.REQUIRED,
          train_input: InputConfig | None = None, eval_input: InputConfig | None = None,
          schedule: Schedule = Schedule(), optimizer: OptimizerConfig = OptimizerConfig(),
          loss: DetectionLoss = DetectionLoss(),
          postprocess: PostprocessConfig = PostprocessConfig(),
          label_map_file: str | None = None, annotation_file: str | None = None,
          strategy: str = "off", tpu: str | None = None, seed: int | None = None,
          num_eval_images: int | None = None) -> dict:
  """Trains and/or evaluates a detector in `model_dir`; returns the final metrics (if any)."""
  if mode not in MODES:
    raise ValueError(f"--mode must be one of {MODES}, got {mode!r}.")
  if seed is not None:
    tf.random.set_seed(seed)
  tf.io.gfile.makedirs(model_dir)
  _write_text(os.path.join(model_dir, "config.gin"), gin.config_str())
  distribution = get_strategy(strategy, tpu)
  with distribution.scope():
    model = model_fn()
    opt, learning_rate = build_optimizer(
        optimizer, schedule.batch_size, schedule.total_steps,
        schedule.steps_for_epochs(optimizer.warmup_epochs))
    step = opt.iterations
  logging.info("Model %s: %s parameters, %d anchors", model.name, f"{model.count_params():,}",
               model.anchors.num_anchors)
  task = DetectionTask(model, loss, postprocess)
  keeper = CheckpointKeeper(model_dir, model, optimizer=opt)
  resumed = keeper.restore_latest()
  results = {}

  if mode in ("train", "train_and_eval"):
    if train_input is None:
      raise ValueError("train.train_input is not set; bind it in the gin file.")
    replicas = distribution.num_replicas_in_sync
    if schedule.batch_size % replicas:
      raise ValueError(f"Global batch {schedule.batch_size} is not divisible by the "
                       f"{replicas} replicas.")
    dataset = distribution.distribute_datasets_from_function(
        lambda ctx: make_dataset(train_input, model.anchors, model.num_classes,
                                 ctx.get_per_replica_batch_size(schedule.batch_size), ctx,
                                 seed=seed))
    trainer = Trainer(distribution, model, opt, task.compute_loss, optimizer.weight_decay,
                      optimizer.clip_norm)
    start = int(step.numpy())
    logging.info("%s at step %d of %d (global batch %d, %d replica(s)).",
                 "Resuming" if resumed else "Starting", start, schedule.total_steps,
                 schedule.batch_size, replicas)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
    started = time.monotonic()
    results["train"] = run_training(
        trainer, iter(dataset), start_step=start, total_steps=schedule.total_steps,
        steps_per_loop=schedule.steps_per_loop, global_batch=schedule.batch_size,
        learning_rate=learning_rate, checkpoint=keeper,
        checkpoint_every=schedule.checkpoint_every_steps, summary_writer=writer,
        log_every=schedule.log_every_steps)
    results["train_seconds"] = time.monotonic() - started
    _write_text(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())

  if mode in ("eval", "train_and_eval"):
    if eval_input is None:
      raise ValueError("train.eval_input is not set; bind it in the gin file.")
    if mode == "eval" and not resumed:
      raise FileNotFoundError(f"No checkpoint in {model_dir} to evaluate; train first.")
    names = load_category_names(label_map_file, annotation_file, model.num_classes)
    dataset = make_dataset(eval_input, model.anchors, model.num_classes, batch_size=8)
    metrics, per_class = task.evaluate(
        dataset, names, annotation_file, num_images=num_eval_images,
        visualize_path=os.path.join(model_dir, "eval_detections.png"))
    print(format_metrics(metrics, postprocess.nms_mode), flush=True)
    print("Per-class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()),
          flush=True)
    save_metrics(os.path.join(model_dir, "metrics.json"), metrics, per_class,
                 {"step": int(step.numpy()), "nms": postprocess.nms_mode})
    with tf.summary.create_file_writer(os.path.join(model_dir, "eval")).as_default(
        step=int(step.numpy())):
      for name, value in metrics.items():
        tf.summary.scalar(f"coco/{name}", value)
    results["metrics"], results["per_class_AP"] = metrics, per_class
  return results
