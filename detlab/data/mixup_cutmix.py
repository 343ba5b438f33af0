"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch, stateless.

Written here instead of using tfm's `official.vision.ops.augment.MixupAndCutmix` (2.20):
  * its CutMix label weight is 1 - cut_h * cut_w / (H * W) of the *unclipped* box, while the
    pasted rectangle is clipped at the image border (its centre is uniform over the whole
    image), so the labels overstate the pasted area -- up to 4x at a corner (timm's
    "correct_lam" clips first; we do too);
  * its cut width is computed from the image height (tensorflow/models#11271);
  * it draws from stateful random ops, so a resumed run would not repeat the mix.
tfm's Beta sampler itself is right in 2.20 (tensorflow/models#13490, fixed by #13525);
tests/data/test_classification_input.py checks both its and our Beta(alpha, alpha) moments.

The batch keeps integer labels; mixing adds the partner's label and the weight of the own
label, so the loss is w * CE(labels) + (1 - w) * CE(mix_labels) with any label smoothing.
The partner of example i is example B-1-i (the reversed batch), as tfm and timm do.
"""
import tensorflow as tf


def stateless_beta(shape, alpha: float, seed: tf.Tensor) -> tf.Tensor:
  """Beta(alpha, alpha) samples: X / (X + Y) with X, Y ~ Gamma(alpha, 1)."""
  seed_x, seed_y = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  x = tf.random.stateless_gamma(shape, seed_x, alpha=alpha)
  y = tf.random.stateless_gamma(shape, seed_y, alpha=alpha)
  return x / tf.maximum(x + y, 1e-12)


def mixup(images: tf.Tensor, alpha: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """images [B, H, W, C] float -> (lam * x_i + (1 - lam) * x_{B-1-i}, lam [B])."""
  lam = stateless_beta(tf.shape(images)[:1], alpha, seed)
  weight = tf.cast(lam[:, None, None, None], images.dtype)
  return weight * images + (1.0 - weight) * tf.reverse(images, [0]), lam


def cutmix(images: tf.Tensor, alpha: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Pastes a box of the partner into each image; weight = 1 - (clipped box area) / (H W).

  The box has sides sqrt(1 - lam) * (H, W), lam ~ Beta(alpha, alpha), centre uniform.
  """
  beta_seed, centre_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  batch = tf.shape(images)[0]
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  size = tf.cast(tf.stack([height, width]), tf.float32)
  lam = stateless_beta([batch], alpha, beta_seed)
  cut = tf.sqrt(1.0 - lam)[:, None] * size  # [B, 2]
  centre = tf.random.stateless_uniform([batch, 2], centre_seed) * size
  low = tf.clip_by_value(tf.round(centre - cut / 2), 0.0, size)
  high = tf.clip_by_value(tf.round(centre + cut / 2), 0.0, size)
  rows = tf.range(tf.cast(height, tf.float32)) + 0.5
  cols = tf.range(tf.cast(width, tf.float32)) + 0.5
  in_rows = (rows[None] >= low[:, :1]) & (rows[None] < high[:, :1])  # [B, H]
  in_cols = (cols[None] >= low[:, 1:]) & (cols[None] < high[:, 1:])  # [B, W]
  box = in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
  mixed = tf.where(box[..., None], tf.reverse(images, [0]), images)
  area = tf.reduce_prod(high - low, axis=1) / tf.reduce_prod(size)
  return mixed, 1.0 - area


def mix_batch(batch: dict, seed: tf.Tensor, mixup_alpha: float, cutmix_alpha: float) -> dict:
  """Adds "mix_labels" [B] and "mix_weight" [B] (of the own label) to a batch
  {"images", "labels"}; with both alphas > 0 each batch takes CutMix or Mixup with
  probability 1/2 (tfm's switch_prob)."""
  images, labels = batch["images"], batch["labels"]
  choice_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = tf.random.stateless_uniform([], choice_seed) < 0.5
    images, weight = tf.cond(use_cutmix, lambda: cutmix(images, cutmix_alpha, mix_seed),
                             lambda: mixup(images, mixup_alpha, mix_seed))
  elif cutmix_alpha > 0:
    images, weight = cutmix(images, cutmix_alpha, mix_seed)
  else:
    images, weight = mixup(images, mixup_alpha, mix_seed)
  return {**batch, "images": images, "mix_labels": tf.reverse(labels, [0]),
          "mix_weight": tf.cast(weight, tf.float32)}
