"""Resuming a checkpoint under another strategy restores model, optimizer, EMA and step
exactly (issue 23): `record_restored` makes train() write what it restored, just before its
first step, beside the model_dir; `differences` compares that with the checkpoint it came from.

Run as a script (by test_strategy_resume.py, in a fresh process: logical devices must be set
before TF starts): resumes MODEL_DIR's checkpoint under MirroredStrategy over two logical CPUs
for one more step; prints {"restored_from", "differences", "compared", "warnings", "replicas",
"final"} as JSON on its last line.
"""
import json
import os
import sys

STATE = "restored_state"  # beside model_dir: <model_dir>.restored_state (not inside it)


def record_restored(patch, experiment, model_dir: str) -> str:
  """Patches (a pytest MonkeyPatch) experiment.run_training to write the restored state to
  the returned checkpoint path before the first step, then train as usual."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = os.path.join(f"{model_dir}.{STATE}", "state")
  run_training = experiment.run_training

  def recording(trainer, iterator, **kwargs):
    tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                        **({"ema": trainer.ema.shadows} if trainer.ema else {})).write(path)
    return run_training(trainer, iterator, **kwargs)
  patch.setattr(experiment, "run_training", recording)
  return path


def _tensors(path: str) -> dict:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name.split("/")[0] in ("model", "optimizer", "ema")}


def differences(checkpoint: str, restored: str) -> tuple[list[str], int]:
  """(names that differ or exist in one only, how many were compared): every model,
  optimizer (step included) and EMA tensor of `checkpoint` against the restored state."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  saved, state = _tensors(checkpoint), _tensors(restored)
  differ = sorted(set(saved) ^ set(state))
  differ += [n for n in sorted(set(saved) & set(state)) if not np.array_equal(saved[n], state[n])]
  return differ, len(saved)


def main(model_dir: str, shapes_dir: str, steps: int) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  import gin  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  from detlab import config  # pylint: disable=import-outside-toplevel
  from detlab.training import experiment  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(__file__))
  from tiny_backbone import tiny_bindings  # pylint: disable=import-outside-toplevel,import-error

  checkpoint = tf.train.latest_checkpoint(model_dir)
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  warnings = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(experiment, "get_strategy", lambda name, tpu=None: mirrored)
    patch.setattr(experiment.logging, "warning",
                  lambda message, *args: warnings.append(message % args))
    state = record_restored(patch, experiment, model_dir)
    config.parse_gin(["efficientdet_d0_shapes.gin"], tiny_bindings(
        shapes_dir, "train.strategy = 'mirrored'", f"Schedule.train_steps = {steps}"))
    results = experiment.train(model_dir, "train")
    gin.clear_config()
  differ, compared = differences(checkpoint, state)
  print(json.dumps({"restored_from": os.path.basename(checkpoint), "differences": differ[:10],
                    "compared": compared, "warnings": warnings,
                    "replicas": mirrored.num_replicas_in_sync, "preempted": results["preempted"],
                    "final": os.path.basename(tf.train.latest_checkpoint(model_dir))}))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
