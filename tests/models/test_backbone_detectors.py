"""EfficientDet with each Inception-family and Xception backbone, built through its gin file
combined with shapes_data.gin (as a user trains it on the built-in data set): for every family
the pyramid the BiFPN receives and returns and which backbone weights train; for TRAINED, a few
training steps on one built-in batch that lower the loss.

The training path (DetectionTask loss, Trainer, optimizer) is the same code for every backbone;
what differs is the backbone's layers. TRAINED holds the two families with layers of detlab's
own: GoogLeNet (LocalResponseNormalization) and Inception-ResNet (ScaledResidual, here v1, the
smaller). The others are stock tf_keras layers (Conv2D, SeparableConv2D, BN, pooling, concat),
so their training steps (up to 120 s each on a loaded 2-core machine) showed nothing new; the
trainable flags of their weights are still checked for every family."""
import contextlib
import math

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import config
from detlab.backbones.contract import feature_channels
from detlab.data.detection_input import make_dataset
from detlab.detection.postprocess import PostprocessConfig
from detlab.tasks.detection import DetectionTask
from detlab.training.loop import Trainer

IMAGE_SIZE = 128
BATCH = 2
UPDATES = 2
# family -> (backbone channels at levels 3, 4, 5 (the BiFPN's inputs), its gin file's BiFPN width)
FAMILIES = {
    "inception_v1": ((480, 832, 1024), 64),
    "inception_v2": ((320, 576, 1024), 64),
    "inception_v3": ((288, 768, 2048), 88),
    "inception_v4": ((384, 1024, 1536), 112),
    "inception_resnet_v1": ((256, 896, 1792), 88),
    "inception_resnet_v2": ((320, 1088, 1536), 112),
    "xception": ((256, 728, 2048), 88),
}


def _configured(name: str):
  """The object a gin reference such as `DetectionTask.model_fn` stands for, built now."""
  return gin.query_parameter(name).scoped_configurable_fn()


@contextlib.contextmanager
def _functions_run_eagerly():
  # Tracing the train step of these 200-800-layer networks takes 30-90 s on 2 CPU cores; a few
  # eager steps take less.
  tf.config.run_functions_eagerly(True)
  try:
    yield
  finally:
    tf.config.run_functions_eagerly(False)


@pytest.fixture(scope="module", params=list(FAMILIES))
def detector(request, shapes_dir):
  """(family, model, train InputConfig, DetectionLoss) from the family's gin file."""
  keras.backend.clear_session()
  keras.utils.set_random_seed(0)  # python, numpy and TF: unseeded keras initializers too
  gin.clear_config()
  config.parse_gin([f"efficientdet_{request.param}.gin", "shapes_data.gin"],
                   [f"TRAIN_FILE_PATTERN='{shapes_dir}/train-*'", f"IMAGE_SIZE={IMAGE_SIZE}"])
  model = _configured("DetectionTask.model_fn")
  # Build every variable now, so that their initial values do not depend on which tests of
  # this module ran first (a lazily built layer would draw from the global seed later).
  model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]), training=False)
  yield (request.param, model, _configured("DetectionTask.train_input"),
         _configured("DetectionTask.loss"))
  gin.clear_config()
  keras.backend.clear_session()


# Families whose detector takes training steps below (see the module docstring).
TRAINED = ("inception_v1", "inception_resnet_v1")


def test_the_pyramid_has_the_contract_levels_sizes_and_channels(detector) -> None:
  family, model, _, _ = detector
  channels, fpn_width = FAMILIES[family]
  backbone_channels = feature_channels(model.backbone)
  assert [backbone_channels[str(l)] for l in (3, 4, 5)] == list(channels)
  assert model.num_classes == 4  # shapes_data.gin overrides the detector file's COCO classes
  images = tf.random.stateless_uniform([BATCH, IMAGE_SIZE, IMAGE_SIZE, 3], (0, 0), -1.0, 1.0)
  pyramid = model.pyramid(images, training=False)
  assert sorted(pyramid, key=int) == [str(l) for l in range(3, 8)]
  for level in range(3, 8):
    side = math.ceil(IMAGE_SIZE / 2**level)
    assert tuple(pyramid[str(level)].shape) == (BATCH, side, side, fpn_width), level
  # Every backbone weight trains except BN's moving statistics (nothing frozen by the family).
  trainable = {v.ref() for v in model.backbone.trainable_variables}
  assert {v.name: v.ref() in trainable for v in model.backbone.variables} == {
      v.name: "moving_" not in v.name for v in model.backbone.variables}


@pytest.mark.parametrize("detector", TRAINED, indirect=True)
def test_a_few_steps_on_one_built_in_batch_lower_the_loss(detector) -> None:
  family, model, train_input, loss = detector
  batch = next(iter(make_dataset(train_input, model.anchors, model.num_classes, BATCH, seed=0)))
  batches = iter(tf.data.Dataset.from_tensors(batch).repeat())
  task = DetectionTask(loss, PostprocessConfig())
  # Adam, not the recipe's SGD: at batch 2, SGD moves the focal loss of the positives too little
  # in 2 updates (the recipe optimizer is exercised by tests/e2e/test_train_cli.py).
  trainer = Trainer(tf.distribute.get_strategy(), model, keras.optimizers.Adam(1e-3),
                    task.compute_loss, weight_decay=0.0, clip_norm=0.0)
  stem = model.backbone.trainable_variables[0]
  stem_before = stem.numpy()
  losses = []  # initial, after 1 update, after 2 updates
  with _functions_run_eagerly():
    for _ in range(UPDATES):
      trainer.train_steps(batches, tf.constant(1))
      losses.append(trainer.results()["total"])  # the loss this step started from
      trainer.reset_metrics()
  losses.append(float(task.compute_loss(model, batch, training=True)["total"]))
  assert np.all(np.isfinite(losses)), (family, losses)
  assert losses[0] > losses[1] > losses[2], (family, losses)
  # Falls by more than step-to-step noise (measured: 5.8-13 % after 2 updates).
  assert losses[2] < 0.97 * losses[0], (family, losses)
  assert not np.allclose(stem.numpy(), stem_before), f"{family}: no update reached {stem.name}"
