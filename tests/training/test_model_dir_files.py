"""A model_dir on another file system (ram://, TF's in-memory one, standing in for gs://) gets
every file a run writes; `train.num_eval_images` limits the evaluation; the run's seed is
drawn when unset, saved, and reused on resume."""
import json

import tensorflow as tf

from detlab.evaluation.detection import DetectionEvaluator
from detlab.training import run_seed


def test_a_ram_model_dir_gets_every_file_and_the_seed_is_saved_and_reused(
    run_train, monkeypatch):
  update = DetectionEvaluator.update
  evaluated = []

  def counting(self, batch, outputs):
    evaluated.append(len(batch["source_ids"]))
    assert len(outputs["num_detections"]) == evaluated[-1]
    return update(self, batch, outputs)

  monkeypatch.setattr(DetectionEvaluator, "update", counting)
  model_dir = "ram://detlab-run"
  said = []  # run_seed's log lines (caplog misses absl's INFO once a test changed its level)
  monkeypatch.setattr(run_seed.logging, "info", lambda message, *args: said.append(
      message % args))
  results = run_train(model_dir, "train_and_eval", "Schedule.train_steps = 2",
                      "train.num_eval_images = 3", "train.seed = None")
  assert not results["preempted"] and "AP" in results["metrics"]
  assert sum(evaluated) == 3  # of the 8 eval images
  for name in ("config.gin", "operative_config.gin", "checkpoint", "ckpt-2.index",
               "variables.json", "metrics.json", "eval_detections.png", "seed.json"):
    assert tf.io.gfile.exists(f"{model_dir}/{name}"), name
  for events in ("train", "eval"):
    assert tf.io.gfile.glob(f"{model_dir}/{events}/events.out.tfevents.*"), events
  with tf.io.gfile.GFile(f"{model_dir}/metrics.json") as f:
    assert json.load(f)["step"] == 2
  with tf.io.gfile.GFile(f"{model_dir}/seed.json") as f:
    seed = json.load(f)["seed"]
  assert f"Seed {seed} (drawn; set train.seed = {seed} to repeat this run)." in said
  assert not tf.io.gfile.exists(f"{model_dir}/writer.lock")  # released at the end

  said.clear()
  run_train(model_dir, "train", "Schedule.train_steps = 3", "train.seed = None")
  assert any(line.startswith(f"Seed {seed} (saved in") for line in said), said
  assert tf.io.gfile.exists(f"{model_dir}/ckpt-3.index")
