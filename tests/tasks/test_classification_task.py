"""ClassificationTask: the loss (label smoothing, aux weights, Mixup/CutMix mixing) against a
direct numpy computation, evaluation with its PNG, and the NUM_CLASSES check."""
import functools
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.data.classification_example import build_classification_example
from detlab.data.classification_input import ClassificationInputConfig
from detlab.models.classifier import classifier
from detlab.training.evaluation import evaluate
from detlab.tasks.classification import ClassificationTask


class _TwoHeads(keras.Model):
  """logits = x W; in training also aux = x V (weight 0.4)."""

  def __init__(self, w, v):
    super().__init__()
    self.w, self.v = tf.constant(w, tf.float32), tf.constant(v, tf.float32)
    self.aux_loss_weights = {"aux_logits": 0.4}

  def call(self, images, training=None):
    x = tf.reshape(images, [tf.shape(images)[0], -1])
    if training:
      return {"logits": x @ self.w, "aux_logits": x @ self.v}
    return x @ self.w


def _ce(logits, labels, smoothing):
  k = logits.shape[1]
  z = logits - logits.max(1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
  targets = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
  return -(targets * log_p).sum(1)


def test_loss_is_smoothed_ce_plus_weighted_aux_with_mixing():
  rng = np.random.default_rng(0)
  w, v = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
  images = rng.normal(size=(6, 2, 2, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0])
  task = ClassificationTask(num_classes=5, image_size=2, label_smoothing=0.1)
  model = _TwoHeads(w, v)
  x = images.reshape(6, -1)
  plain = task.compute_loss(model, {"images": images, "labels": labels}, training=True)
  main, aux = _ce(x @ w, labels, 0.1).mean(), _ce(x @ v, labels, 0.1).mean()
  np.testing.assert_allclose(plain["class"], main, rtol=1e-5)
  np.testing.assert_allclose(plain["total"], main + 0.4 * aux, rtol=1e-5)
  weight = rng.uniform(size=6).astype(np.float32)
  mixed = task.compute_loss(model, {"images": images, "labels": labels,
                                    "mix_labels": labels[::-1], "mix_weight": weight}, True)
  def mix(logits):
    return (weight * _ce(logits, labels, 0.1) + (1 - weight) * _ce(logits, labels[::-1], 0.1))
  np.testing.assert_allclose(mixed["total"], mix(x @ w).mean() + 0.4 * mix(x @ v).mean(),
                             rtol=1e-5)
  # Inference form: no aux term.
  inference = task.compute_loss(model, {"images": images, "labels": labels}, training=False)
  np.testing.assert_allclose(inference["total"], main, rtol=1e-5)


def test_num_classes_below_the_label_map_names_both_numbers():
  with pytest.raises(ValueError, match="NUM_CLASSES is 3 but the label map has 4"):
    ClassificationTask(num_classes=3, image_size=32, class_names=list("abcd"))


def _records(tmp_path) -> str:
  """10 flat 36x36 images, image i of value 20 i, label i % 3."""
  path = str(tmp_path / "val-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(10):
      buffer = io.BytesIO()
      Image.fromarray(np.full((36, 36, 3), 20 * i, np.uint8)).save(buffer, format="PNG")
      writer.write(build_classification_example(buffer.getvalue(), i % 3, "x", 36, 36,
                                                "png").SerializeToString())
  return path


def test_inputs_follow_the_backbones_input_convention(tmp_path):
  """GoogLeNet takes [-1, 1] (x / 127.5 - 1); the config's own mean/std win over it."""
  eval_input = ClassificationInputConfig(file_pattern=_records(tmp_path), is_training=False)
  task = ClassificationTask(num_classes=3, image_size=32, eval_input=eval_input,
                            model_fn=functools.partial(classifier, "inception_v1",
                                                       aux_heads=False))
  task.build_model()
  images = next(iter(task.build_inputs(False, 10)))["images"].numpy()
  np.testing.assert_allclose(images[:, 0, 0, 0], 20 * np.arange(10) / 127.5 - 1, atol=1e-5)
  task.eval_input = ClassificationInputConfig(file_pattern=eval_input.file_pattern,
                                              mean=(0.0,) * 3, std=(2.0,) * 3)
  images = next(iter(task.build_inputs(False, 10)))["images"].numpy()
  np.testing.assert_allclose(images[:, 0, 0, 0], 10 * np.arange(10), atol=1e-4)


def test_evaluate_returns_the_metrics_and_writes_the_png(tmp_path):
  path = _records(tmp_path)
  eval_input = ClassificationInputConfig(file_pattern=path, is_training=False)
  task = ClassificationTask(num_classes=3, image_size=32, eval_input=eval_input,
                            model_fn=functools.partial(classifier, "efficientnet_b0"),
                            class_names=["a", "b", "c"])
  model = task.build_model()
  png = str(tmp_path / task.png_name)
  metrics, extra = evaluate(task, model, task.eval_dataset(model, 4), png_path=png)
  assert metrics["num_examples"] == 10 and len(extra["per_class_accuracy"]) == 3
  assert 0 <= metrics["top1"] <= metrics["top5"] == 1.0  # top-5 of 3 classes
  assert Image.open(png).size[0] >= 4 * 320  # 4 columns of tiles upscaled to >= 320 px
