"""Classification metrics (top-1, top-5, per-class accuracy, loss) and the task's evaluator
(those metrics and a captioned grid of images, drawn by evaluation/visualize.py).

The evaluator accumulates per-batch counts in numpy on the host (no TF state), so batches
from any strategy or an exported model can be fed alike, and `result()` is strict JSON:
classes without examples have per-class accuracy None (JSON null), never NaN.
"""
import json

import numpy as np

from detlab.evaluation import visualize
from detlab.evaluation.base import Evaluator


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class ClassificationEvaluator:
  """Accumulates logits [B, K] and integer labels [B] in 0..K-1 over batches.

  `result()` -> {"top1", "top5", "per_class_accuracy" (list of K, None where a class has no
  example), "loss" (mean softmax cross-entropy, no label smoothing), "num_examples"}.
  top5 is top-min(5, K).
  """

  def __init__(self, num_classes: int):
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    self.num_classes = num_classes
    self.reset()

  def reset(self) -> None:
    self._count = 0
    self._top1 = 0
    self._top5 = 0
    self._loss_sum = 0.0
    self._class_total = np.zeros(self.num_classes, np.int64)
    self._class_correct = np.zeros(self.num_classes, np.int64)

  def update(self, logits, labels) -> None:
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[1] != self.num_classes:
      raise ValueError(f"logits must be [B, {self.num_classes}], got {list(logits.shape)}.")
    if logits.shape[0] != labels.shape[0]:
      raise ValueError(f"{logits.shape[0]} logits rows but {labels.shape[0]} labels.")
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ValueError(f"label {int(bad[0])} is outside 0..{self.num_classes - 1}: the data has "
                       "more classes than num_classes (NUM_CLASSES); set it to the label map's "
                       "size.")
    rows = np.arange(labels.shape[0])
    # Rank of the true class = number of classes scoring strictly higher (ties favour it).
    rank = (logits > logits[rows, labels][:, None]).sum(axis=1)
    correct = rank == 0
    self._count += labels.shape[0]
    self._top1 += int(correct.sum())
    self._top5 += int((rank < min(5, self.num_classes)).sum())
    self._loss_sum += float(-_log_softmax(logits)[rows, labels].sum())
    np.add.at(self._class_total, labels, 1)
    np.add.at(self._class_correct, labels, correct.astype(np.int64))

  def result(self) -> dict:
    if self._count == 0:
      raise ValueError("ClassificationEvaluator.result() before any update(): the evaluation "
                       "data set is empty; check EVAL_FILE_PATTERN.")
    per_class = [None if total == 0 else float(correct / total)
                 for correct, total in zip(self._class_correct, self._class_total)]
    return {"top1": self._top1 / self._count, "top5": self._top5 / self._count,
            "per_class_accuracy": per_class, "loss": self._loss_sum / self._count,
            "num_examples": self._count}

  def to_json(self) -> str:
    return json.dumps(self.result(), allow_nan=False, indent=1)


class ClassificationTaskEvaluator(Evaluator):
  """The classification task's evaluator (evaluation/base.py): ClassificationEvaluator's
  metrics of the outputs {"logits" [B, K]} against the batch's "labels", and a captioned
  grid of the first `num_panels` images."""

  def __init__(self, num_classes: int, convention, class_names: dict | None = None,
               num_panels: int = 16):
    self.metrics = ClassificationEvaluator(num_classes)
    self.convention, self.class_names, self.num_panels = convention, class_names, num_panels
    self.panels = []  # (image uint8, label, prediction, score)

  def update(self, batch, outputs):
    logits, labels = outputs["logits"], batch["labels"]
    self.metrics.update(logits, labels)
    take = min(self.num_panels - len(self.panels), len(labels))
    if take > 0:
      images = self.convention.to_uint8(batch["images"][:take])
      shifted = np.exp(logits[:take] - logits[:take].max(axis=1, keepdims=True))
      probabilities = shifted / shifted.sum(axis=1, keepdims=True)
      for i in range(take):
        predicted = int(np.argmax(logits[i]))
        self.panels.append((images[i], int(labels[i]), predicted,
                            float(probabilities[i, predicted])))

  def result(self):
    result = self.metrics.result()
    per_class = result.pop("per_class_accuracy")
    return result, {"per_class_accuracy": per_class}

  def draw(self, path):
    if not self.panels:
      return False
    images, labels, predictions, scores = zip(*self.panels)
    visualize.classification_grid(np.stack(images), list(labels), list(predictions), path,
                                  class_names=self.class_names, scores=list(scores))
    return True
