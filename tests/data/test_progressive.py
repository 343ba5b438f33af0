"""EfficientNetV2 progressive learning (Tan & Le 2021, Algorithm 1): the stage values (linear
in the stage index, equal stages, the stage from the step), batches that change size at the
stage boundaries with the stage's dropout rate, the ScheduledDropout rate following the batch
inside one traced step, and a resume mid-stage (from the iterator checkpoint, or a stream
started at the restored step) that continues the stage."""
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.data.classification_example import build_classification_example
from detlab.data.classification_input import ClassificationInputConfig
from detlab.data.progressive import ProgressiveConfig, progressive_stages, stage_at
from detlab.layers.scheduled_dropout import ScheduledDropout, scheduled_dropout_rate
from detlab.tasks.classification import ClassificationTask


def test_stages_are_equal_and_linear_in_the_stage_index():
  """EfficientNetV2-S: 128 -> 300 px, RandAugment 5 -> 10, dropout 0.1 -> 0.2; M's mixup 0 ->
  0.2; T = 100 steps in 4 stages of 25."""
  config = ProgressiveConfig(total_steps=100)
  stages = progressive_stages(config, 300, 10.0, 0.2, 0.0, 0.2)
  assert [s.first_step for s in stages] == [0, 25, 50, 75]
  assert [s.end_step for s in stages] == [25, 50, 75, None]
  assert [s.image_size for s in stages] == [128, 185, 242, 300]  # 128 + 172 k / 3, truncated
  np.testing.assert_allclose([s.randaugment_magnitude for s in stages], [5, 20 / 3, 25 / 3, 10])
  np.testing.assert_allclose([s.mixup_alpha for s in stages], [0, 0.2 / 3, 0.4 / 3, 0.2])
  np.testing.assert_allclose([s.cutmix_alpha for s in stages], 0.0)
  np.testing.assert_allclose([s.dropout_rate for s in stages], [0.1, 0.4 / 3, 0.5 / 3, 0.2])
  assert [stage_at(stages, step).index for step in (0, 24, 25, 49, 50, 74, 75, 99, 500)] == \
      [0, 0, 1, 1, 2, 2, 3, 3, 3]
  uneven = progressive_stages(ProgressiveConfig(total_steps=10), 300, 10, 0, 0, 0.2)
  assert [s.first_step for s in uneven] == [0, 2, 5, 7]  # k * T // M


def test_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="ProgressiveConfig.schedule"):
    ProgressiveConfig()
  with pytest.raises(ValueError, match="one step per stage"):
    progressive_stages(ProgressiveConfig(total_steps=3), 300, 10, 0, 0, 0.2)
  with pytest.raises(ValueError, match="min_image_size 128 is larger"):
    progressive_stages(ProgressiveConfig(total_steps=8), 64, 10, 0, 0, 0.2)


def test_scheduled_dropout_follows_the_rate_in_one_traced_step():
  layer = ScheduledDropout(0.5)
  model = keras.Sequential([keras.Input([4000]), layer])
  traces = []

  @tf.function
  def zeros_fraction(rate):
    traces.append(1)
    with scheduled_dropout_rate(model, rate):
      out = model(tf.ones([1, 4000]), training=True)
    return tf.reduce_mean(tf.cast(out == 0, tf.float32)), tf.reduce_max(out)

  for rate in (0.1, 0.3, 0.0):
    fraction, peak = zeros_fraction(tf.fill([2], rate))
    assert abs(float(fraction) - rate) < 0.04  # binomial sd <= 0.008
    np.testing.assert_allclose(float(peak), 1 / (1 - rate), rtol=1e-5)
  assert len(traces) == 1
  # Outside the context: keras Dropout at its own rate; inference: identity.
  out = model(tf.ones([1, 4000]), training=True)
  assert abs(float(tf.reduce_mean(tf.cast(out == 0, tf.float32))) - 0.5) < 0.04
  np.testing.assert_array_equal(model(tf.ones([1, 4000])).numpy(), 1.0)


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
  """12 textured 24x24 images, label i % 3."""
  path = tmp_path_factory.mktemp("prog") / "train-00000-of-00001.tfrecord"
  rng = np.random.default_rng(0)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i in range(12):
      image = rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)
      writer.write(build_classification_example(_png(image), i % 3, str(i % 3), 24, 24,
                                                "png").SerializeToString())
  return str(path)


def _tiny_classifier(num_classes, image_size, scheduled_dropout=False):
  """conv -> pool -> ScheduledDropout(0.3) -> FC on any input size."""
  assert image_size is None and scheduled_dropout  # what progressive learning asks for
  inputs = keras.Input([None, None, 3])
  x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  x = ScheduledDropout(0.3, name="top_dropout")(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="fc")(x), name="tiny")


def _task(records, **input_kwargs):
  train = ClassificationInputConfig(file_pattern=records, shuffle_buffer=12, mean=(0, 0, 0),
                                    std=(1, 1, 1), **input_kwargs)
  return ClassificationTask(num_classes=3, image_size=20, train_input=train,
                            eval_input=ClassificationInputConfig(file_pattern=records),
                            model_fn=_tiny_classifier, eval_image_size=24,
                            progressive=ProgressiveConfig(total_steps=8, min_image_size=8,
                                                          min_dropout_rate=0.1))


def test_batches_change_size_and_dropout_at_the_stage_boundaries(records):
  """T = 8 in 4 stages of 2 steps: 8 -> 20 px (8, 12, 16, 20), dropout 0.1 -> 0.3; Mixup
  0 -> 0.6 gives stage 0 the identity mix (weight 1) so every batch has the same keys."""
  task = _task(records, mixup_alpha=0.6)
  model = task.build_model()
  data = task.train_dataset(model, None, 2, seed=5)
  assert data.element_spec["images"].shape.as_list() == [2, None, None, 3]
  batches = list(data.take(10))
  assert [b["images"].shape[1] for b in batches] == [8, 8, 12, 12, 16, 16, 20, 20, 20, 20]
  np.testing.assert_allclose([b["dropout_rate"].numpy()[0] for b in batches],
                             np.repeat([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3], [2, 2, 2, 4]),
                             rtol=1e-6)
  np.testing.assert_array_equal(batches[0]["mix_weight"].numpy(), 1.0)
  assert np.all(batches[-1]["mix_weight"].numpy() < 1.0)
  loss = task.compute_loss(model, batches[0], training=True)  # the rate reaches the model
  assert np.isfinite(float(loss["total"]))
  evaluation = next(iter(task.eval_dataset(model, 2)))  # at the eval size
  assert evaluation["images"].shape == (2, 24, 24, 3) and "dropout_rate" not in evaluation


def test_a_resume_mid_stage_gives_the_uninterrupted_batches(records, tmp_path):
  task = _task(records)
  model = task.build_model()
  uninterrupted = [b["images"].numpy() for b in task.train_dataset(model, None, 2, 5).take(6)]
  iterator = iter(task.train_dataset(model, None, 2, 5))
  for _ in range(3):  # into stage 1, mid-stage
    next(iterator)
  path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "it"))
  resumed = iter(task.train_dataset(model, None, 2, 5))
  tf.train.Checkpoint(iterator=resumed).restore(path)
  for want in uninterrupted[3:]:
    np.testing.assert_array_equal(next(resumed)["images"].numpy(), want)
  # Without the iterator in the checkpoint: a stream started at the restored step is in that
  # step's stage, and ends it at the same step.
  restarted = [b["images"].shape[1]
               for b in task.train_dataset(model, None, 2, 5, start_step=3).take(3)]
  assert restarted == [12, 16, 16]


@pytest.fixture
def clean_gin():
  import gin
  gin.clear_config()
  yield gin
  gin.clear_config()


@pytest.mark.parametrize("variant, sizes, eval_size, augment, magnitudes, alpha, dropout", [
    ("s", [128, 185, 242, 300], 384, "randaugment", [5, 20 / 3, 25 / 3, 10], 0.0, 0.2),
    ("m", [128, 213, 298, 384], 480, "randaugment", [5, 25 / 3, 35 / 3, 15], 0.2, 0.3),
    ("b0", [128, 149, 170, 192], 224, "autoaugment", None, 0.0, 0.2),
])
def test_v2_recipes_ramp_the_reference_values(clean_gin, variant, sizes, eval_size, augment,
                                              magnitudes, alpha, dropout):
  """google/automl effnetv2_configs: S 300/384, RandAugment 10, mix 0; M 384/480, 15, 0.2;
  B0 192/224 with AutoAugment; 4 stages over 350 epochs of ImageNet at batch 2048."""
  from detlab import config
  from detlab.heads.classification import HEAD_SPECS
  gin = clean_gin
  assert HEAD_SPECS[f"efficientnetv2_{variant}"].dropout == dropout  # the classifier's
  config.parse_gin([f"classification_efficientnetv2_{variant}.gin"], [])
  progressive = gin.query_parameter("ClassificationTask.progressive").scoped_configurable_fn()
  train = gin.query_parameter("ClassificationTask.train_input").scoped_configurable_fn()
  assert progressive.steps == -(-350 * 1281167 // 2048)
  stages = progressive_stages(progressive, gin.query_parameter("%IMAGE_SIZE"),
                              train.randaugment_magnitude, train.mixup_alpha,
                              train.cutmix_alpha, dropout)
  assert [s.image_size for s in stages] == sizes
  assert gin.query_parameter("%EVAL_IMAGE_SIZE") == eval_size and train.augment == augment
  if magnitudes:
    np.testing.assert_allclose([s.randaugment_magnitude for s in stages], magnitudes)
  np.testing.assert_allclose([s.mixup_alpha for s in stages], np.linspace(0, alpha, 4))
  np.testing.assert_allclose([s.dropout_rate for s in stages], np.linspace(0.1, dropout, 4))


def test_train_resumed_without_the_input_position_starts_the_stream_at_its_step(records,
                                                                                tmp_path):
  """checkpoint_input=False (or a distributed iterator that cannot be saved): train() builds
  the stream after the restore, at the restored step (stage 1 of 4 here, mid-stage)."""
  from detlab.training.experiment import Schedule, train
  task = _task(records)
  starts = []
  build = task.train_dataset

  def recording(model, context, batch, seed, start_step=0):
    starts.append(start_step)
    return build(model, context, batch, seed, start_step)
  task.train_dataset = recording

  def run(steps):
    schedule = Schedule(batch_size=2, train_steps=steps, steps_per_loop=1, log_every_steps=1,
                        checkpoint_every_steps=1, num_train_images=12)
    return train(str(tmp_path / "run"), "train", task=task, schedule=schedule,
                 checkpoint_input=False, seed=1)
  run(3)
  assert starts == [0]
  result = run(8)  # the stages still split ProgressiveConfig.total_steps = 8
  assert starts == [0, 0, 3] and not result["preempted"]
  assert np.isfinite(result["train"]["total"])
