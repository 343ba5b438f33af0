"""Per-pixel softmax cross-entropy for semantic segmentation, ignore label excluded.

loss = sum_{valid pixels} w[y] * CE(smoothed one-hot(y), softmax(logits)) / N_valid,
N_valid = the number of pixels whose label is not `ignore_label` in the global batch.
Computed in float32 whatever the logits' dtype. Label smoothing spreads eps over all K
classes: target = (1 - eps) * one_hot + eps / K (as keras' categorical cross-entropy).
"""
import dataclasses

import gin
import tensorflow as tf

IGNORE_LABEL = 255


def valid_pixel_normalizer(num_valid: tf.Tensor) -> tf.Tensor:
  """This replica's normalizer: valid pixels in the global batch over the replicas.

  As detection's `replica_normalizer`: the trainer divides each replica's loss by the number
  of replicas N and sums gradients, so dividing by N_global / N makes N replicas train as one
  device at the same global batch. At least 1 (a batch of only ignore pixels gives loss 0).
  """
  context = tf.distribute.get_replica_context()
  replicas = context.num_replicas_in_sync if context is not None else 1
  if replicas > 1:
    num_valid = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(num_valid))
  return tf.maximum(num_valid, 1.0) / replicas


@gin.register(module="detlab.segmentation")
@dataclasses.dataclass(frozen=True)
class SegmentationLoss:
  """class_weights: None or K per-class weights (weighs each valid pixel by its label's
  weight; the normalizer stays the valid-pixel count). label_smoothing: eps in [0, 1)."""
  ignore_label: int = IGNORE_LABEL
  label_smoothing: float = 0.0
  class_weights: tuple | None = None

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"SegmentationLoss.label_smoothing must be in [0, 1), got "
                       f"{self.label_smoothing}.")

  def __call__(self, logits: tf.Tensor, labels: tf.Tensor) -> dict:
    """logits [B, H, W, K], labels [B, H, W] (or [B, H, W, 1]) int class ids / ignore_label.

    Labels other than ignore_label must be in [0, K) (the data tools check this).
    Returns {"total", "num_valid_pixels"} float32 scalars.
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = logits.shape[-1]
    if self.class_weights is not None and len(self.class_weights) != num_classes:
      raise ValueError(f"SegmentationLoss.class_weights has {len(self.class_weights)} "
                       f"entries but the model has {num_classes} classes.")
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == logits.shape.rank:
      labels = tf.squeeze(labels, -1)
    valid = tf.not_equal(labels, self.ignore_label)
    safe_labels = tf.where(valid, labels, 0)
    targets = tf.one_hot(safe_labels, num_classes, dtype=tf.float32)
    if self.label_smoothing:
      targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
    per_pixel = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
    weights = tf.cast(valid, tf.float32)
    if self.class_weights is not None:
      weights *= tf.gather(tf.constant(self.class_weights, tf.float32), safe_labels)
    num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
    total = tf.reduce_sum(per_pixel * weights) / valid_pixel_normalizer(num_valid)
    return {"total": total, "num_valid_pixels": num_valid}
