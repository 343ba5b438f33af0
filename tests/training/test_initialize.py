"""Fine-tuning starts: from a detector with another num_classes, from a backbone-only
checkpoint; an unrelated checkpoint is an error, never a silent fresh start."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab.training.initialize import InitCheckpointError, initialize_from_checkpoint


def _same(a, b) -> bool:
  return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.variables, b.variables))


def test_detector_with_other_classes_loads_all_but_the_class_predictor(tiny_detector, tmp_path,
                                                                      capsys):
  keras.utils.set_random_seed(1)
  source = tiny_detector(num_classes=3)
  path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
  keras.utils.set_random_seed(2)
  target = tiny_detector(num_classes=5)
  predictor_before = [v.numpy() for v in target.class_net.variables if "predict" in v.name]
  table = initialize_from_checkpoint(target, path, "detector")
  for part in ("backbone", "fpn", "box_net"):
    assert _same(getattr(source, part), getattr(target, part)), part
    assert table[part]["skipped"] == table[part]["new"] == 0
  assert table["class_net"]["skipped"] == 2  # predictor pointwise kernel + bias (A*K)
  predictor_after = [v.numpy() for v in target.class_net.variables if "predict" in v.name]
  changed = [not np.array_equal(a, b) for a, b in zip(predictor_before, predictor_after)]
  assert sum(changed) == 1  # only the depthwise kernel fits; pointwise kernel + bias are new
  assert "loaded" in capsys.readouterr().out


def test_backbone_only_checkpoint_initialises_the_backbone(tiny_detector, tmp_path):
  keras.utils.set_random_seed(1)
  source = tiny_detector()
  tf.train.Checkpoint(model=source.backbone).save(str(tmp_path / "backbone"))
  keras.utils.set_random_seed(2)
  target = tiny_detector()
  fpn_before = [v.numpy() for v in target.fpn.variables]
  table = initialize_from_checkpoint(target, str(tmp_path), "backbone")  # a directory works
  assert _same(source.backbone, target.backbone)
  assert table["backbone"]["new"] == table["backbone"]["skipped"] == 0
  assert table["fpn"]["loaded"] == 0 and table["fpn"]["new"] == len(fpn_before)
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(fpn_before, target.fpn.variables))


def test_an_unrelated_checkpoint_is_an_error(tiny_detector, tmp_path):
  other = keras.Sequential([keras.Input([3]), keras.layers.Dense(2)])
  path = tf.train.Checkpoint(model=other).save(str(tmp_path / "other"))
  with pytest.raises(InitCheckpointError, match="required variable"):
    initialize_from_checkpoint(tiny_detector(), path, "backbone")
  with pytest.raises(ValueError, match="init_mode"):
    initialize_from_checkpoint(tiny_detector(), path, "heads")


def test_quantization_aware_fine_tuning_starts_from_a_trained_run(run_train, tmp_path):
  """QAT through train(): refused without a trained start (its BN stays frozen at what it
  starts with); from a float run's model_dir its first steps set every range, and the
  checkpoint holds them for the exporter."""
  from detlab import api  # pylint: disable=import-outside-toplevel
  from detlab.layers import fake_quant  # pylint: disable=import-outside-toplevel
  qat = ("efficientdet.quantization_aware = True", "Schedule.train_steps = 2")
  with pytest.raises(ValueError, match="bind train.init_checkpoint"):
    run_train(tmp_path / "scratch", "train", *qat)
  run_train(tmp_path / "float", "train", "Schedule.train_steps = 1")
  run_train(tmp_path / "qat", "train", *qat,
            f"train.init_checkpoint = '{tmp_path / 'float'}'")
  model = api.load_detector([str(tmp_path / "qat" / "operative_config.gin")],
                            checkpoint=str(tmp_path / "qat"))
  assert fake_quant.is_quantization_aware(model) and fake_quant.ranges_seen(model.fake_quant)
