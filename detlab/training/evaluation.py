"""COCO evaluation inside training: once, every N steps (keeping the best), or continuously.

Evaluates the EMA weights when there are any (EmaConfig.evaluate_average), swapping them into
the model for the evaluation and back afterwards.
"""
import os

from absl import logging
import tensorflow as tf

from detlab.evaluation.coco_evaluator import format_metrics, save_metrics
from detlab.training.checkpoint import BestCheckpoint


class PeriodicEvaluator:
  """Runs `task.evaluate` on `make_dataset()` and writes metrics.json + eval/ summaries."""

  def __init__(self, model_dir: str, task, make_dataset, category_names: dict,
               annotation_file: str | None, nms_mode: str, num_images: int | None = None,
               average=None, best: BestCheckpoint | None = None):
    self.model_dir, self.task, self.make_dataset = model_dir, task, make_dataset
    self.category_names, self.annotation_file = category_names, annotation_file
    self.nms_mode, self.num_images = nms_mode, num_images
    self.average, self.best = average, best
    self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))

  def __call__(self, step: int) -> tuple[dict, dict]:
    """Evaluates the current weights (EMA if configured) as those of `step`."""
    weights = "EMA" if self.average is not None else "raw"
    logging.info("Evaluating step %d on %s weights.", step, weights)
    if self.average is not None:
      with self.average.swapped():
        metrics, per_class = self._evaluate()
    else:
      metrics, per_class = self._evaluate()
    print(f"Step {step} ({weights} weights):\n" + format_metrics(metrics, self.nms_mode),
          flush=True)
    print("Per-class AP: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()),
          flush=True)
    save_metrics(os.path.join(self.model_dir, "metrics.json"), metrics, per_class,
                 {"step": step, "nms": self.nms_mode, "weights": weights})
    png = os.path.join(self.model_dir, "eval_detections.png")
    with self.writer.as_default(step=step):
      for name, value in metrics.items():
        tf.summary.scalar(f"coco/{name}", value)
      if tf.io.gfile.exists(png):  # ground truth green, predictions red, as in the PNG
        tf.summary.image("detections", tf.io.decode_png(tf.io.read_file(png), 3)[None])
    self.writer.flush()
    if self.best is not None:
      self.best.update(step, metrics)
    return metrics, per_class

  def _evaluate(self) -> tuple[dict, dict]:
    return self.task.evaluate(
        self.make_dataset(), self.category_names, self.annotation_file,
        num_images=self.num_images,
        visualize_path=os.path.join(self.model_dir, "eval_detections.png"))


def evaluate_continuously(evaluator: PeriodicEvaluator, keeper, step_variable,
                          total_steps: int, timeout_s: float) -> tuple[dict, dict] | None:
  """Evaluates each new checkpoint in keeper.model_dir until one of step >= total_steps
  arrives or no new checkpoint comes for `timeout_s` seconds; returns the last results."""
  results = None
  for path in tf.train.checkpoints_iterator(keeper.model_dir, min_interval_secs=1,
                                            timeout=timeout_s):
    try:
      keeper.restore_path(path)
    except tf.errors.OpError as error:  # deleted by max_to_keep meanwhile, or half-written
      logging.warning("Skipping %s: %s", path, error.message.splitlines()[0])
      continue
    step = int(step_variable.numpy())
    results = evaluator(step)
    if step >= total_steps:
      break
  else:
    logging.info("No new checkpoint in %s for %.0f s; stopping.", keeper.model_dir, timeout_s)
  return results
