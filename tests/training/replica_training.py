"""Shared by the subprocess checks of distributed training (mirrored_check.py,
multi_worker_check.py): one tiny detector, its DetectionLoss, and a few Trainer steps under
a given strategy."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tiny_backbone import tiny_test_backbone  # pylint: disable=import-error
from detlab.benchmark import synthetic_train_batch
from detlab.detection.losses import DetectionLoss
from detlab.models.efficientdet import efficientdet
from detlab.training.ema import EmaConfig, WeightAverage
from detlab.training.loop import Trainer

GLOBAL_BATCH, STEPS = 4, 2


def detection_loss(model, batch, training):
  """The detector's own loss on this replica's part of the batch (DetectionLoss all-reduces
  the positives, so the replicas' parts add up to the global batch's loss)."""
  class_outputs, box_outputs = model(batch["images"], training=training)
  cls, box = model.flatten_outputs(class_outputs, box_outputs)
  return DetectionLoss()(cls, box, batch["cls_targets"], batch["box_targets"])


def _tiny_detector(sync_bn: bool | None = None):
  return efficientdet(tiny_test_backbone, num_classes=3, image_size=64, max_level=5,
                      fpn_width=16, fpn_cells=1, head_repeats=1, sync_bn=sync_bn)


def _check_sync_bn_default(model, strategy) -> None:
  """Sync BN is on by default exactly when the strategy has several replicas."""
  layers = [l for l in _all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
  expected = strategy.num_replicas_in_sync > 1
  assert layers and all(l.synchronized == expected for l in layers), (
      expected, sorted({l.synchronized for l in layers}))


def _all_layers(layer):
  for sub in layer._flatten_layers(include_self=False):  # pylint: disable=protected-access
    yield sub


def global_batch() -> dict:
  """The same synthetic global batch in every process (seeded)."""
  keras.utils.set_random_seed(0)
  return synthetic_train_batch(_tiny_detector(sync_bn=False), GLOBAL_BATCH)


def train(strategy, make_dataset) -> tuple:
  """STEPS steps of SGD + EMA under `strategy`; `make_dataset(strategy)` gives the distributed
  dataset. Returns (weights, EMA shadows, last mean loss, initial weights) as numpy."""
  keras.utils.set_random_seed(0)
  with strategy.scope():
    # Sync BN on both sides: tf_keras' fused BN (the 1-replica default) updates the moving
    # variance with Bessel's correction, its synchronized BN without, so the moving
    # statistics would differ by n/(n-1) (1e-3 here) even though training is the same.
    model = _tiny_detector(sync_bn=True)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    average = WeightAverage(model, EmaConfig(decay=0.5, dynamic_decay=False))
  initial = [v.numpy() for v in model.variables]
  trainer = Trainer(strategy, model, optimizer, detection_loss, 4e-5, 10.0, ema=average)
  trainer.train_steps(iter(make_dataset(strategy)), tf.constant(STEPS))
  with strategy.scope():
    _check_sync_bn_default(_tiny_detector(), strategy)
  return ([v.numpy() for v in model.variables], [v.numpy() for v in average.shadows],
          trainer.results()["total"], initial)


def max_abs_diff(a: list, b: list) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
