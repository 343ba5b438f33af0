"""detlab.api: load_detector builds the gin model and loads detlab checkpoints (EMA or raw);
detect on raw uint8 images equals the evaluation pipeline's detections in original pixels."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from detlab import api
from detlab.training.evaluation import predictor
from detlab.backbones import input_convention
from detlab.backbones.conventions import InputConvention
from detlab.data.detection_input import make_dataset
from detlab.data.tf_example import build_example
from detlab.training.ema import WeightAverage, averaged_variables

# D0 at 128 px with 3 classes: the real network, small enough to build in seconds.
BINDINGS = ["IMAGE_SIZE = 128", "NUM_CLASSES = 3"]


@pytest.fixture(scope="module")
def model():
  return api.load_detector(["efficientdet_d0.gin"], BINDINGS)


def _images(seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(0, 256, size, dtype=np.uint8) for size in [(96, 160, 3), (200, 120, 3)]]


def _write_records(images, path):
  with tf.io.TFRecordWriter(path) as writer:
    for i, image in enumerate(images):
      example = build_example(
          encoded_image=tf.io.encode_png(image).numpy(), image_format="png",
          source_id=str(i + 1), height=image.shape[0], width=image.shape[1],
          boxes_yxyx=np.array([[1.0, 1.0, 20.0, 30.0]]), category_ids=[1],
          category_names=["a"])
      writer.write(example.SerializeToString())


def test_detect_equals_the_evaluation_pipeline(model, tmp_path):
  """Same images through the eval input pipeline (TFRecord -> parser) and evaluation's
  mapping back: the same boxes in original pixels, scores and classes (+1 = category id)."""
  images = _images()
  _write_records(images, str(tmp_path / "val.tfrecord"))
  eval_input, task = api.inference_setup(model)
  eval_input = eval_input.__class__(file_pattern=str(tmp_path / "val.tfrecord"))
  batch = next(iter(make_dataset(eval_input, model.anchors, model.num_classes, batch_size=2,
                                 convention=input_convention(model))))
  expected = {k: v.numpy() for k, v in predictor(task, model)(
      {"images": batch["images"], "image_info": batch["image_info"]}).items()}
  got = api.detect(model, images)
  assert got["num_detections"].tolist() == expected["num_detections"].tolist()
  assert min(got["num_detections"]) > 0  # random weights still score above 0.001
  for i, image in enumerate(images):
    n = got["num_detections"][i]
    np.testing.assert_allclose(got["boxes"][i, :n], expected["boxes"][i, :n], atol=1e-4)
    np.testing.assert_allclose(got["scores"][i, :n], expected["scores"][i, :n], atol=1e-6)
    np.testing.assert_array_equal(got["classes"][i, :n], expected["classes"][i, :n] + 1)
    assert (got["classes"][i, n:] == 0).all() and (got["boxes"][i, n:] == 0).all()
    height, width = image.shape[:2]
    assert got["boxes"][i, :n, 2].max() <= height and got["boxes"][i, :n, 3].max() <= width
  # The 200-px-high image is scaled by 128/200: some box must reach beyond the 128-px input.
  assert got["boxes"][1, :got["num_detections"][1], 2].max() > 128


def test_detect_takes_a_batch_and_one_image(model):
  image = _images()[0]
  batch = api.detect(model, np.stack([image, image]))
  one = api.detect(model, image)
  assert batch["boxes"].shape == (2, 100, 4) and one["boxes"].shape == (1, 100, 4)
  np.testing.assert_allclose(batch["boxes"][0], one["boxes"][0], atol=1e-4)
  np.testing.assert_array_equal(batch["classes"][1], one["classes"][0])


def test_detect_rejects_float_images_with_the_fix(model):
  with pytest.raises(ValueError, match="expected uint8"):
    api.detect(model, [np.zeros([8, 8, 3], np.float32)])


def _save_with_ema(model, directory):
  """A detlab checkpoint as training writes it: model + EMA shadows that differ from it."""
  average = WeightAverage(model)
  for shadow in average.shadows:
    shadow.assign(shadow + 0.01)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model, ema=average.shadows),
                             str(directory), max_to_keep=1).save(checkpoint_number=5)
  return [v.numpy() for v in model.variables], [s.numpy() for s in average.shadows]


def test_load_detector_loads_ema_or_raw_weights(model, tmp_path):
  raw, ema = _save_with_ema(model, tmp_path)
  images = tf.random.normal([1, 128, 128, 3])
  loaded = api.load_detector(["efficientdet_d0.gin"], BINDINGS, checkpoint=str(tmp_path),
                             use_ema=False)
  for a, b in zip(raw, loaded.variables):
    np.testing.assert_array_equal(a, b.numpy())
  np.testing.assert_allclose(loaded(images, training=False)[0]["3"],
                             model(images, training=False)[0]["3"], atol=1e-5)
  averaged = api.load_detector(["efficientdet_d0.gin"], BINDINGS,
                               checkpoint=str(tmp_path / "ckpt-5"))
  targets = averaged_variables(averaged)  # trainable + BN moving statistics
  assert len(targets) == len(ema) and len(targets) < len(averaged.variables) + 1
  for shadow, target in zip(ema, targets):
    np.testing.assert_array_equal(shadow, target.numpy())


def test_a_checkpoint_of_another_model_is_a_clear_error(model, tmp_path):
  _save_with_ema(model, tmp_path)
  with pytest.raises(api.CheckpointLoadError, match="does not fit"):
    api.load_detector(["efficientdet_d0.gin"], ["IMAGE_SIZE = 128", "NUM_CLASSES = 5"],
                      checkpoint=str(tmp_path))
  (tmp_path / "empty").mkdir()
  with pytest.raises(api.CheckpointLoadError, match="No checkpoint in directory"):
    api.load_detector(["efficientdet_d0.gin"], BINDINGS, checkpoint=str(tmp_path / "empty"))


def test_preprocess_uses_the_backbone_input_convention(model):
  """An image of the input size passes unresized: ImageNet mean/std by default (automl's),
  the backbone's own convention when it has one (e.g. keras Inception's [-1, 1])."""
  image = _images()[0][:, :128].copy()
  image = np.concatenate([image, image[:32]], axis=0)  # 128 x 128
  inputs, info = api.preprocess(model, [image])
  mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
  np.testing.assert_allclose(inputs[0], (image - mean) / std, atol=1e-4)
  np.testing.assert_allclose(info[0, 2], [1.0, 1.0])
  model.backbone.input_convention = InputConvention(mean=(127.5,) * 3, std=(127.5,) * 3)
  try:
    inputs, _ = api.preprocess(model, [image])
  finally:
    del model.backbone.input_convention
  np.testing.assert_allclose(inputs[0], image / 127.5 - 1.0, atol=1e-5)


def test_load_detector_keeps_the_callers_gin_config_and_sees_only_its_own():
  """A caller's bindings survive load_detector (it cleared them before), also when it fails;
  the detector is built from its own files only: the caller's PostprocessConfig.iou_threshold,
  which the recipe does not bind, does not reach it."""
  gin.clear_config()
  gin.parse_config(["PostprocessConfig.iou_threshold = 0.3", "MY_MACRO = 7"])
  try:
    model = api.load_detector(["efficientdet_d0.gin"], BINDINGS)
    assert api.inference_setup(model)[1].postprocess_config.iou_threshold == 0.5
    assert "IMAGE_SIZE = 128" in api.detector_config(model)
    assert "0.3" not in api.detector_config(model)
    assert gin.query_parameter("PostprocessConfig.iou_threshold") == 0.3
    assert gin.query_parameter("%MY_MACRO") == 7
    with pytest.raises(ValueError, match="not a detector"):
      api.load_detector(["classification_efficientnet_b0_demo.gin"])
    assert gin.query_parameter("PostprocessConfig.iou_threshold") == 0.3
    with pytest.raises(ValueError):  # the detector's bindings did not stay behind
      gin.query_parameter("%IMAGE_SIZE")
  finally:
    gin.clear_config()


def test_a_model_the_caller_drops_is_freed_after_detect():
  """detlab.api keeps what detect() needs per model (its task, its traced predict) without
  holding the model: a long-lived service that loads detectors one after another must not
  keep every one it ever served. (The model lives in a function that returns, as in a
  service: the test's own frame can hold a snapshot of its locals while it runs.)"""
  import gc  # pylint: disable=import-outside-toplevel
  import weakref  # pylint: disable=import-outside-toplevel

  def serve_once():
    model = api.load_detector(["efficientdet_d0.gin"], BINDINGS + [
        "efficientdet.fpn_cells = 1", "efficientdet.fpn_width = 16",
        "efficientdet.head_repeats = 1"])
    assert api.detect(model, [_images()[0]])["boxes"].shape == (1, 100, 4)
    return weakref.ref(model)

  dropped = serve_once()
  gc.collect()
  assert dropped() is None
