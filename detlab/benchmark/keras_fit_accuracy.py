r"""The accuracy reference beside a detlab classification run: tf_keras.applications'
network of the same architecture (weights=None) trained with `model.fit` on the same input
pipeline, optimizer, learning-rate schedule, label smoothing and step budget as the gin's
`train()` would use, then evaluated on the same eval set (top-1).

  python -m detlab.benchmark.keras_fit_accuracy --gin_file=classification_own_data.gin \
      [--gin_bindings=...] [--bn_momentum=0.9] [--output_json=PATH]

The images are detlab's training batches (crop, flip, resize) with detlab's normalisation
undone, since the keras application normalises 0-255 pixels itself. keras' model has no
weight decay (its layers carry no regulariser) and no EMA; detlab's recipe has both.
"""
import json
import time

from absl import app, flags
import numpy as np
import tensorflow as tf
import tf_keras as keras

from detlab import config
from detlab.benchmark.keras_fit import keras_application_for
from detlab.io import write_json
from detlab.progress import Progress

FLAGS = flags.FLAGS
if __name__ == "__main__":
  flags.DEFINE_multi_string("gin_file", ["classification_own_data.gin"], "Classification gin.")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings.")
  flags.DEFINE_float("bn_momentum", None, "Set every BatchNormalization's momentum (keras' "
                     "default is 0.99).")
  flags.DEFINE_integer("seed", 0, "Seed of the weights and the input stream.")
  flags.DEFINE_string("output_json", None, "Also write the result here.")


class _Progress(keras.callbacks.Callback):
  def __init__(self, total: int):
    super().__init__()
    self.progress = Progress(total, unit="steps", min_interval=30.0)

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss", float("nan"))
    self.progress.update(batch + 1, prefix="keras fit ", suffix=f" | loss {loss:.4f}")


def keras_fit_accuracy(seed: int = 0, bn_momentum: float | None = None) -> dict:
  """Trains and evaluates the keras twin of the parsed gin's classifier; returns
  {"application", "steps", "batch_size", "top1", "train_seconds", "bn_momentum"}."""
  # pylint: disable=import-outside-toplevel
  from detlab.data.classification_input import normalization
  from detlab.training.setup import configured_task, schedule_optimizer, train_argument
  task = configured_task()
  if task.name != "classification":
    raise app.UsageError(f"--gin_file must configure a classification task, got {task.name}.")
  keras.utils.set_random_seed(seed)
  detlab_model = task.build_model()  # sets task.convention (how detlab normalises)
  application = keras_application_for(detlab_model.name)
  if application is None:
    raise app.UsageError(f"No tf_keras.applications twin of {detlab_model.name}.")
  del detlab_model
  schedule, opt_config = train_argument("schedule"), train_argument("optimizer")
  keras.utils.set_random_seed(seed)
  model = getattr(keras.applications, application)(
      weights=None, input_shape=(task.image_size, task.image_size, 3),
      classes=task.num_classes, classifier_activation=None)
  if bn_momentum is not None:
    for layer in model.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = bn_momentum
  optimizer, _ = schedule_optimizer(opt_config, schedule, "float32")
  model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=task.label_smoothing))
  mean, std = normalization(task.train_input, task.convention)

  def to_pixels(batch):  # detlab's normalised images -> the 0-255 keras normalises itself
    return (batch["images"] * std + mean,
            tf.one_hot(batch["labels"], task.num_classes))

  train = task.build_inputs(True, schedule.batch_size, seed=seed).map(to_pixels)
  steps = schedule.total_steps
  start = time.monotonic()
  model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[_Progress(steps)])
  train_seconds = time.monotonic() - start
  correct = total = 0
  for images, labels in task.build_inputs(False, 64).map(to_pixels):
    logits = model(images, training=False)
    correct += int(np.sum(np.argmax(logits, -1) == np.argmax(labels, -1)))
    total += int(labels.shape[0])
  return {"application": application, "steps": steps, "batch_size": schedule.batch_size,
          "top1": correct / total, "num_examples": total,
          "train_seconds": round(train_seconds, 1), "bn_momentum": bn_momentum or 0.99}


def main(argv) -> None:
  del argv
  config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings)
  result = keras_fit_accuracy(FLAGS.seed, FLAGS.bn_momentum)
  print(json.dumps(result), flush=True)
  if FLAGS.output_json:
    write_json(FLAGS.output_json, result)


if __name__ == "__main__":
  app.run(main)
