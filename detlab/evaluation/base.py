"""What a task's evaluation gives the one evaluation loop (training/evaluation.py).

The loop runs `Task.predict` per replica of the strategy, brings the outputs to the host as
numpy arrays and hands them, with the batch they came from, to the task's `Evaluator`:

  evaluator = task.evaluator(model)
  for batch in eval set:  evaluator.update(batch (numpy), task.predict(model, batch) (numpy))
  metrics, extra = evaluator.result()
  evaluator.draw(png_path)

An evaluator keeps host state only (counts, COCO results, a few images to draw), so the same
one serves a 1-replica, an N-replica or a multi-worker run, and an exported model's outputs.
"""
import abc
import os

from detlab.evaluation import visualize


class Evaluator(abc.ABC):
  """Accumulates one evaluation's results batch by batch."""

  @abc.abstractmethod
  def update(self, batch: dict, outputs: dict) -> None:
    """batch: the eval batch's arrays (numpy, first dim = images); outputs: `Task.predict`'s
    arrays for the same images (numpy)."""

  @abc.abstractmethod
  def result(self) -> tuple[dict, dict]:
    """(metrics: {name: number or None}, the scalars TensorBoard plots and best/ keeps;
    extra: {name: JSON-able}, e.g. per-class results) over every update so far."""

  @abc.abstractmethod
  def draw(self, path: str) -> bool:
    """Writes the evaluation's picture to `path` (any tf.io.gfile path); False when there is
    nothing to draw (no update yet)."""


class CombinedEvaluator(Evaluator):
  """Several evaluators over the same batches and outputs (each reads its own keys): their
  metrics and extras merged (names must not clash), each one's picture in its own file and
  all of them stacked in the one at `path`."""

  def __init__(self, parts: dict):
    """parts: {png file name: Evaluator}; the files go beside the stacked picture."""
    self.parts = dict(parts)

  def update(self, batch, outputs):
    for part in self.parts.values():
      part.update(batch, outputs)

  def result(self):
    metrics, extra = {}, {}
    for part in self.parts.values():
      m, e = part.result()
      clash = (set(m) & set(metrics)) | (set(e) & set(extra))
      if clash:
        raise ValueError(f"Evaluators report the same names {sorted(clash)}.")
      metrics.update(m)
      extra.update(e)
    return metrics, extra

  def draw(self, path):
    folder = os.path.dirname(path)
    drawn = [os.path.join(folder, name) for name, part in self.parts.items()
             if part.draw(os.path.join(folder, name))]
    if drawn:
      visualize.stack_pngs(drawn, path)
    return bool(drawn)
