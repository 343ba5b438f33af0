"""Issue 24's classification knobs: the classifier's head_init 'fan_in' and 'zeros' start
the loss within 10 % of ln K (the reference init does not: the test can fail), and
`ClassificationTask.bn_momentum` reaches every BN layer, stock tf_keras and detlab's alike;
every task takes bn_momentum.

The classifier: tests/e2e/learning_backbone.py's small net (stock BN layers) under
EfficientNet's top (1x1 conv to 1280 channels, detlab BN, swish, pool, dropout, FC with the
reference's uniform fan-out init), 32 px, 10 classes."""
import functools
import inspect
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.heads.classification import HEAD_SPECS, HeadSpec
from detlab.layers.normalization import BatchNormalization
from detlab.models.classifier import classifier
from detlab.tasks.classification import ClassificationTask
from detlab.tasks.detection import DetectionTask
from detlab.tasks.joint import JointTask
from detlab.tasks.segmentation import SegmentationTask

K, SIZE = 10, 32


@pytest.fixture(scope="module")
def build_task():
  """build_task(seed, **task_kwargs) -> (task, model) on the small net with EfficientNet's
  top (the net is registered only while this module's tests run)."""
  import gin  # pylint: disable=import-outside-toplevel
  with gin.unlock_config():  # train() elsewhere in this worker may have locked it
    from tests.e2e import learning_backbone  # pylint: disable=import-outside-toplevel
  with learning_backbone.registered():
    HEAD_SPECS[learning_backbone.NAME] = HeadSpec(0.2, top_filters=1280, efficientnet_init=True)

    def build(seed, head_init="reference", **kwargs):
      keras.utils.set_random_seed(seed)
      task = ClassificationTask(K, SIZE, model_fn=functools.partial(
          classifier, learning_backbone.NAME, head_init=head_init), **kwargs)
      return task, task.build_model()
    yield build


def _batch(seed: int) -> dict:
  rng = np.random.RandomState(seed)
  return {"images": tf.constant(rng.normal(size=[16, SIZE, SIZE, 3]), tf.float32),
          "labels": tf.constant(rng.randint(0, K, 16), tf.int32)}


def test_few_class_heads_start_at_ln_k_and_the_reference_head_does_not(build_task):
  batch = _batch(0)
  losses = {}
  for head_init in ("fan_in", "zeros", "reference"):
    task, model = build_task(1, head_init)
    losses[head_init] = float(task.compute_loss(model, batch, training=True)["class"])
  print("initial class loss", losses, "ln K", math.log(K))
  assert abs(losses["fan_in"] - math.log(K)) < 0.1 * math.log(K), losses
  assert abs(losses["zeros"] - math.log(K)) < 0.1 * math.log(K), losses
  assert abs(losses["reference"] - math.log(K)) > 0.1 * math.log(K), losses


def test_unknown_head_init_is_refused(build_task):
  with pytest.raises(ValueError, match="head_init"):
    build_task(1, "uniform")


def test_bn_momentum_reaches_every_bn_layer(build_task):
  def layers(model):
    return [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]
  _, untouched = build_task(2)
  _, model = build_task(2, bn_momentum=0.77)
  found = layers(model)
  assert len(found) == len(layers(untouched)) >= 10
  assert any(isinstance(m, BatchNormalization) for m in found)  # the head's top_bn
  assert any(not isinstance(m, BatchNormalization) for m in found)  # the net's stock BNs
  assert {m.momentum for m in found} == {0.77}
  assert {m.momentum for m in layers(untouched)} == {0.9, 0.99}  # the builders' own


@pytest.mark.parametrize("task_class", [ClassificationTask, DetectionTask, SegmentationTask,
                                        JointTask])
def test_every_task_takes_bn_momentum(task_class):
  assert "bn_momentum" in inspect.signature(task_class.__init__).parameters
