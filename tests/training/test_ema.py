"""EMA of the weights: the update rule, the decay warm-up, swapping for evaluation, and the
shadows in the checkpoint."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.training.checkpoint import CheckpointKeeper
from detlab.training.ema import EmaConfig, WeightAverage, averaged_variables


def _model():
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input([3]), keras.layers.Dense(4, name="hidden"),
                           keras.layers.BatchNormalization(name="bn"),
                           keras.layers.Dense(1, name="out")])


def test_averaged_variables_are_trainables_and_bn_statistics():
  names = [v.name for v in averaged_variables(_model())]
  assert len(names) == 8  # 2 kernels, 2 biases, gamma, beta, moving mean, moving variance
  assert sum("moving_" in n for n in names) == 2


@pytest.mark.parametrize("dynamic, step, expected", [
    (True, 0, 0.1), (True, 90, 0.91), (True, 10**7, 0.9998), (False, 0, 0.9998)])
def test_decay_warm_up_is_the_reference_formula(dynamic, step, expected):
  average = WeightAverage(_model(), EmaConfig(dynamic_decay=dynamic))
  assert float(average.decay_at(tf.constant(step))) == pytest.approx(expected, rel=1e-6)


def test_update_moves_shadows_towards_the_weights_and_swap_restores():
  model = _model()
  average = WeightAverage(model, EmaConfig(decay=0.75, dynamic_decay=False))
  kernel = model.trainable_variables[0]
  start = kernel.numpy()
  kernel.assign(start + 4.0)
  tf.function(average.update)(tf.constant(100))
  np.testing.assert_allclose(average.shadows[0].numpy(), start + 1.0, rtol=1e-6)  # 0.25 * 4
  with average.swapped():
    np.testing.assert_allclose(kernel.numpy(), start + 1.0, rtol=1e-6)
  np.testing.assert_array_equal(kernel.numpy(), start + 4.0)
  np.testing.assert_allclose(average.shadows[0].numpy(), start + 1.0, rtol=1e-6)
  average.reset()
  np.testing.assert_array_equal(average.shadows[0].numpy(), start + 4.0)


def test_shadows_are_saved_and_restored_with_the_checkpoint(tmp_path):
  model = _model()
  average = WeightAverage(model, EmaConfig())
  average.shadows[0].assign(tf.fill(average.shadows[0].shape, 7.0))
  CheckpointKeeper(str(tmp_path), model, ema=average.shadows).save(1)
  other = _model()
  other_average = WeightAverage(other, EmaConfig())
  assert CheckpointKeeper(str(tmp_path), other, ema=other_average.shadows).restore_latest()
  assert np.all(other_average.shadows[0].numpy() == 7.0)


def test_a_decay_outside_0_1_is_refused():
  with pytest.raises(ValueError, match="0.9998"):
    EmaConfig(decay=1.0)
