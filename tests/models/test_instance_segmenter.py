"""The instance-mask branch (heads/mask.py) and EfficientDet with it
(models/instance_segmentation.py): parameter counts from the layer shapes, the Mask R-CNN /
FPN level assignment (a box reads only its own level, only inside itself), and a detection
half that a detector's checkpoint restores."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.heads.mask import MaskHead
from detlab.models.efficientdet import efficientdet
from detlab.models.instance_segmentation import with_mask_head

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "training"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "export"))
from tiny_backbone import tiny_test_backbone  # noqa: E402  pylint: disable=wrong-import-position,import-error

SIZE, CHANNELS = 128, 16


def _features(seed=0):
  rng = np.random.default_rng(seed)
  return {str(l): tf.constant(rng.normal(size=(1, SIZE >> l, SIZE >> l, CHANNELS)), tf.float32)
          for l in range(3, 6)}


@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
@pytest.mark.parametrize("class_agnostic", [True, False])
def test_mask_head_parameters_follow_the_layer_shapes(class_agnostic, upsample):
  keras.utils.set_random_seed(0)
  width, repeats, classes = 24, 3, 5
  head = MaskHead(classes, width, repeats, mask_size=28, class_agnostic=class_agnostic,
                  upsample=upsample)
  logits = head(_features(), tf.constant([[[8.0, 8.0, 72.0, 56.0]]]), tf.constant([[2]]))
  assert logits.shape == (1, 1, 28, 28) and logits.dtype == tf.float32
  separable = 9 * CHANNELS + CHANNELS * width + (repeats - 1) * (9 * width + width * width)
  bn = 4 * width * repeats  # gamma, beta, moving mean and variance
  if upsample == "transposed":  # the 2x2 transposed conv and its BN
    bn += 4 * width
    separable += 2 * 2 * width * width
  outputs = 1 if class_agnostic else classes
  assert head.count_params() == separable + bn + width * outputs + outputs


def test_bilinear_masks_are_the_half_size_logits_resized():
  """upsample='bilinear': the predictor's M/2 x M/2 logits (the transposed form's layers
  absent) resized bilinearly with half-pixel centres: the 28 x 28 grid's cell centres lie
  on the 14 x 14 grid's, so every 2 x 2 block interpolates its 14 x 14 neighbours."""
  keras.utils.set_random_seed(0)
  head = MaskHead(3, 16, 1, mask_size=28, upsample="bilinear")
  boxes = tf.constant([[[8.0, 8.0, 72.0, 56.0], [0.0, 30.0, 40.0, 128.0]]])
  logits = head(_features(), boxes, tf.zeros([1, 2], tf.int32)).numpy()
  assert not hasattr(head, "upsample") and not hasattr(head, "upsample_bn")
  crops = tf.reshape(head.roi_aligner(_features(), boxes), [2, 14, 14, CHANNELS])
  small = head.predictor(tf.nn.swish(head.bns[0](head.convs[0](crops), training=False)))
  small = small.numpy()[..., 0]
  # Interior cell (2i+1, 2j+1) of the 28-grid sits 1/4 of a 14-cell past (i, j) each way.
  i, j = 5, 8
  want = (0.75 * 0.75 * small[:, i, j] + 0.75 * 0.25 * (small[:, i + 1, j] + small[:, i, j + 1])
          + 0.25 * 0.25 * small[:, i + 1, j + 1])
  np.testing.assert_allclose(logits[0, :, 2 * i + 1, 2 * j + 1], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[0, :, 0, 0], small[:, 0, 0], rtol=1e-5, atol=1e-5)
  assert np.abs(small[:, i, j] - small[:, i + 1, j + 1]).max() > 1e-3  # not a flat map


def test_a_box_reads_only_its_fpn_level_and_only_inside_itself():
  """Level k = floor(4 + log2(sqrt(wh) / 224)) clipped to the pyramid (FPN, eq. 1): a
  128 x 112 box (k = 3.2 -> 3) reads P3; a 16 x 16 box (k < 3) reads P3 too. Features of
  P3 outside the box (with RoIAlign's one-cell bilinear margin) and of other levels change
  nothing."""
  keras.utils.set_random_seed(0)
  head = MaskHead(3, 16, 2, mask_size=14)
  boxes = tf.constant([[[0.0, 0.0, 128.0, 112.0], [16.0, 16.0, 32.0, 32.0]]])
  classes = tf.zeros([1, 2], tf.int32)
  base = _features()
  before = head(base, boxes, classes).numpy()
  other_levels = dict(base, **{"4": base["4"] * 3.0, "5": -base["5"]})
  np.testing.assert_array_equal(head(other_levels, boxes, classes).numpy(), before)
  outside = base["3"].numpy()
  outside[0, 8:, :, :] += 5.0  # P3 rows 8.. = input rows 64.. : outside the small box only
  after = head(dict(base, **{"3": tf.constant(outside)}), boxes, classes).numpy()
  np.testing.assert_array_equal(after[0, 1], before[0, 1])
  assert np.abs(after[0, 0] - before[0, 0]).max() > 1e-3


@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
def test_class_specific_masks_are_gathered_at_each_boxs_class(upsample):
  keras.utils.set_random_seed(0)
  box = tf.constant([[[8.0, 8.0, 72.0, 56.0], [8.0, 8.0, 72.0, 56.0]]])
  agnostic = MaskHead(4, 16, 1, mask_size=14, class_agnostic=True, upsample=upsample)
  out = agnostic(_features(), box, tf.constant([[0, 3]])).numpy()
  np.testing.assert_array_equal(out[0, 0], out[0, 1])
  specific = MaskHead(4, 16, 1, mask_size=14, class_agnostic=False, upsample=upsample)
  out = specific(_features(), box, tf.constant([[0, 3]])).numpy()
  assert np.abs(out[0, 0] - out[0, 1]).max() > 1e-4
  swapped = specific(_features(), box, tf.constant([[3, 0]])).numpy()
  np.testing.assert_array_equal(swapped[0, ::-1], out[0])


def test_a_detectors_checkpoint_restores_the_detection_half(tmp_path):
  """with_mask_head keeps the detector's layers under their attribute names: a detector's
  checkpoint restores into the instance model (only mask_head/ variables left new), which
  then gives that detector's class and box outputs; the branch crops its own features."""
  args = dict(backbone_fn=tiny_test_backbone, num_classes=3, image_size=64, fpn_width=16,
              fpn_cells=1, head_repeats=1, max_level=5)
  keras.utils.set_random_seed(1)
  trained = efficientdet(**args)
  path = tf.train.Checkpoint(model=trained).save(str(tmp_path / "ckpt"))
  keras.utils.set_random_seed(2)
  model = with_mask_head(efficientdet(**args), mask_size=28, repeats=1)
  plain = {v.name for v in trained.variables}
  extra = [v.name for v in model.variables if v.name not in plain]
  assert extra and all(name.startswith("mask_head/") for name in extra), extra
  status = tf.train.Checkpoint(model=model).restore(path)
  status.expect_partial()  # the mask_head variables are new
  images = tf.random.stateless_normal([2, 64, 64, 3], seed=[3, 4])
  want_class, want_box = trained(images, training=False)
  got_class, got_box, features = model(images, training=False)
  for level in want_class:
    np.testing.assert_allclose(got_class[level], want_class[level], atol=1e-6)
    np.testing.assert_allclose(got_box[level], want_box[level], atol=1e-6)
  masks = model.mask_logits(features, tf.constant([[[0.0, 0.0, 32.0, 32.0]]] * 2),
                            tf.zeros([2, 1], tf.int32))
  assert masks.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
def test_folding_keeps_the_mask_logits(upsample):
  """export.fold's BN-free copy of the instance model (tower convs, and the transposed conv
  where there is one, folded with their BN) gives the same mask logits."""
  from detlab.export.fold import count_batch_norms, fold_batch_norms  # pylint: disable=import-outside-toplevel
  from random_stats import randomize_batch_norms  # pylint: disable=import-outside-toplevel,import-error
  keras.utils.set_random_seed(3)
  model = with_mask_head(efficientdet(backbone_fn=tiny_test_backbone, num_classes=3,
                                      image_size=64, fpn_width=16, fpn_cells=1,
                                      head_repeats=1, max_level=5),
                         mask_size=28, repeats=2, upsample=upsample)
  randomize_batch_norms(model.mask_head, seed=4)
  folded = fold_batch_norms(model)
  assert count_batch_norms(folded) == 0 and folded.mask_head.upsample_mode == upsample
  images = tf.random.stateless_normal([1, 64, 64, 3], seed=[5, 6])
  boxes = tf.constant([[[0.0, 0.0, 32.0, 40.0], [10.0, 20.0, 60.0, 50.0]]])
  classes = tf.zeros([1, 2], tf.int32)
  want = model.mask_logits(model(images, training=False)[2], boxes, classes).numpy()
  got = folded.mask_logits(folded(images, training=False)[2], boxes, classes).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert want.std() > 1e-3  # masks that vary by 10x the tolerance
