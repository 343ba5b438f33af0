"""The one evaluation loop (training/evaluation.py: `evaluate`, `predictor`) and what issue 22
asks of it beyond the per-replica equality (test_distribution.py):
- no state bound into a traced function: two models with different weights, evaluated in
  turn by one task (and detected in turn by detlab.api), each give their own results;
- the joint task runs its network once per eval batch;
- num_eval_images and a stop request cut the loop."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from detlab import api
from detlab.models.efficientdet import efficientdet
from detlab.models.joint import joint_detector_segmenter
from detlab.tasks.detection import DetectionTask
from detlab.tasks.joint import JointTask
from detlab.training.evaluation import Stopped, evaluate, predictor
from tiny_backbone import tiny_test_backbone

SIZE, BATCH = 64, 2


def _batches(rng, count, predict=None):
  """Detection eval batches (numpy); with `predict`, every image's ground truth is its two
  best detections under `predict` (so that model scores AP near 1 and another does not)."""
  out = []
  for b in range(count):
    info = np.tile(np.array([[[SIZE, SIZE], [SIZE, SIZE], [1, 1], [0, 0]]], np.float32),
                   [BATCH, 1, 1])
    batch = {"images": rng.normal(size=[BATCH, SIZE, SIZE, 3]).astype(np.float32),
             "image_info": info,
             "source_ids": np.array([str(b * BATCH + i + 1).encode() for i in range(BATCH)]),
             "gt_boxes": np.zeros([BATCH, 2, 4], np.float32),
             "gt_classes": np.zeros([BATCH, 2], np.int32),
             "gt_areas": np.full([BATCH, 2], 100.0, np.float32),
             "gt_is_crowd": np.zeros([BATCH, 2], bool), "gt_count": np.full([BATCH], 2)}
    if predict is not None:
      found = predict({"images": batch["images"], "image_info": info})
      batch["gt_boxes"] = found["boxes"][:, :2].numpy()
      batch["gt_classes"] = found["classes"][:, :2].numpy()
    out.append(batch)
  return out


def _tensors(batches):
  return [{k: tf.constant(v) for k, v in batch.items()} for batch in batches]


@pytest.fixture(scope="module")
def two_detectors():
  """Two tiny detectors, the same architecture, weights from seeds 0 and 1."""
  models = []
  for seed in (0, 1):
    keras.utils.set_random_seed(seed)
    models.append(efficientdet(tiny_test_backbone, num_classes=3, image_size=SIZE,
                               max_level=5, fpn_width=16, fpn_cells=1, head_repeats=1))
  return models


def test_two_models_evaluated_in_turn_give_their_own_metrics(two_detectors):
  first, second = two_detectors
  task = DetectionTask()
  # Ground truth = the first model's own detections: it scores AP ~1, the second does not.
  batches = _batches(np.random.RandomState(0), 2, predictor(task, first))
  ap_first = evaluate(task, first, _tensors(batches))[0]["AP"]
  ap_second = evaluate(task, second, _tensors(batches))[0]["AP"]
  ap_first_again = evaluate(task, first, _tensors(batches))[0]["AP"]
  fresh_second = evaluate(DetectionTask(), second, _tensors(batches))[0]["AP"]
  assert ap_first > 0.9, ap_first
  assert ap_second < 0.5 * ap_first, (ap_first, ap_second)
  assert ap_first_again == ap_first and fresh_second == ap_second


def test_api_detect_uses_each_model_s_own_weights(two_detectors):
  first, second = two_detectors
  image = np.random.RandomState(3).randint(0, 256, size=[64, 80, 3]).astype(np.uint8)
  got_first, got_second = api.detect(first, image), api.detect(second, image)
  assert not np.allclose(got_first["scores"], got_second["scores"])
  np.testing.assert_array_equal(api.detect(first, image)["scores"], got_first["scores"])


class _CountingModel:
  """A model whose every call adds 1 to `calls` inside the graph (so each executed call
  counts, not each trace); everything else is the wrapped model's."""

  def __init__(self, model):
    self._model, self.calls = model, tf.Variable(0, dtype=tf.int64, trainable=False)

  def __call__(self, images, training=None):
    self.calls.assign_add(1)
    return self._model(images, training=training)

  def __getattr__(self, name):
    return getattr(self._model, name)


def test_joint_evaluation_calls_the_network_once_per_batch():
  keras.utils.set_random_seed(0)
  joint = joint_detector_segmenter(tiny_test_backbone, num_classes=3, num_seg_classes=4,
                                   image_size=SIZE, fpn_width=16, fpn_cells=1, head_repeats=1,
                                   seg_head_width=16, seg_head_repeats=1, max_level=5)
  counting = _CountingModel(joint)
  batches = _batches(np.random.RandomState(1), 3)
  for batch in batches:
    batch["original_labels"] = np.random.RandomState(2).randint(0, 4, size=[BATCH, SIZE, SIZE])
  metrics, extra = evaluate(JointTask(model_fn=None), counting, _tensors(batches))
  assert int(counting.calls.numpy()) == 3  # one forward pass per batch, both heads from it
  assert {"AP", "mIoU"} <= set(metrics) and {"per_class_AP", "per_class_iou"} <= set(extra)
  assert metrics["num_images"] == 6


def test_num_images_cuts_the_last_batch_and_a_stop_request_raises(two_detectors):
  first, _ = two_detectors
  task = DetectionTask()
  seen = []
  evaluator = task.evaluator

  def recording(model):
    made = evaluator(model)
    update = made.update
    made.update = lambda batch, outputs: (seen.append(len(outputs["scores"])),
                                          update(batch, outputs))
    return made
  task.evaluator = recording
  evaluate(task, first, _tensors(_batches(np.random.RandomState(4), 3)), num_images=3)
  assert seen == [2, 1]
  with pytest.raises(Stopped):
    evaluate(task, first, _tensors(_batches(np.random.RandomState(4), 2)),
             stop_requested=lambda: True)
