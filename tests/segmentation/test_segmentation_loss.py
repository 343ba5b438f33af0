"""SegmentationLoss against a NumPy computation; ignore pixels; multi-replica normaliser."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from detlab.segmentation.loss import SegmentationLoss


def numpy_loss(logits, labels, eps=0.0, weights=None, ignore=255):
  k = logits.shape[-1]
  z = logits - logits.max(-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
  total, count = 0.0, 0
  for idx in np.ndindex(labels.shape):
    y = labels[idx]
    if y == ignore:
      continue
    target = np.full(k, eps / k)
    target[y] += 1.0 - eps
    w = 1.0 if weights is None else weights[y]
    total += -w * float((target * log_p[idx]).sum())
    count += 1
  return total / max(count, 1)


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=(2, 5, 6))
  labels[rng.random(labels.shape) < 0.3] = 255
  return logits, labels


@pytest.mark.parametrize("eps,weights", [(0.0, None), (0.1, None), (0.0, (1.0, 2.0, 0.5, 3.0)),
                                         (0.2, (0.1, 1.0, 1.0, 4.0))])
def test_equals_numpy(batch, eps, weights):
  logits, labels = batch
  out = SegmentationLoss(label_smoothing=eps, class_weights=weights)(logits, labels)
  np.testing.assert_allclose(out["total"].numpy(), numpy_loss(logits, labels, eps, weights),
                             rtol=1e-5)
  assert out["num_valid_pixels"].numpy() == (labels != 255).sum()


def test_ignore_pixels_get_no_gradient_and_change_nothing(batch):
  logits, labels = batch
  logits = tf.Variable(logits)
  with tf.GradientTape() as tape:
    loss = SegmentationLoss()(logits, labels)["total"]
  grad = tape.gradient(loss, logits).numpy()
  assert np.all(grad[labels == 255] == 0) and np.any(grad[labels != 255] != 0)
  changed = logits.numpy().copy()
  changed[labels == 255] = 100.0
  np.testing.assert_allclose(SegmentationLoss()(changed, labels)["total"].numpy(),
                             loss.numpy(), rtol=1e-6)


def test_only_ignore_pixels_give_zero_and_bf16_logits_compute_in_float32(batch):
  logits, labels = batch
  assert SegmentationLoss()(logits, np.full_like(labels, 255))["total"].numpy() == 0.0
  out = SegmentationLoss()(tf.cast(logits, tf.bfloat16), labels[..., None])
  assert out["total"].dtype == tf.float32
  rounded = tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy()
  np.testing.assert_allclose(out["total"].numpy(), numpy_loss(rounded, labels), rtol=1e-5)


_TWO_REPLICAS = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from detlab.segmentation.loss import SegmentationLoss
data = np.load(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
batches = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((data["logits"], data["labels"])).batch(2))
per_replica = strategy.run(lambda x, y: SegmentationLoss()(x, y)["total"] / 2,
                           args=next(iter(batches)))
print(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy())
"""


def test_two_replicas_add_up_to_one_device(batch, tmp_path):
  # Replica losses (each / N by the trainer, summed) equal the global-batch loss even when
  # the replicas hold different numbers of valid pixels (a fresh process: logical CPUs).
  logits, labels = batch
  labels = labels.copy()
  labels[0, :4] = 255
  np.savez(tmp_path / "batch.npz", logits=logits, labels=labels)
  result = subprocess.run([sys.executable, "-c", _TWO_REPLICAS, str(tmp_path / "batch.npz")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-3000:]
  summed = float(result.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(summed, numpy_loss(logits, labels), rtol=1e-5)
  # Each replica alone would normalise by its own count: a different number.
  own = (numpy_loss(logits[:1], labels[:1]) + numpy_loss(logits[1:], labels[1:])) / 2
  assert abs(own - summed) > 1e-3


def test_bad_settings_name_the_fix(batch):
  logits, labels = batch
  with pytest.raises(ValueError, match="class_weights has 2 entries"):
    SegmentationLoss(class_weights=(1.0, 2.0))(logits, labels)
  with pytest.raises(ValueError, match="label_smoothing"):
    SegmentationLoss(label_smoothing=1.0)
