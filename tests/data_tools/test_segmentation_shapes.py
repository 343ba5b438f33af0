"""The built-in shapes set with --semantic_maps: class maps from the instance masks, readable by
both pipelines; one segmentation step end to end (input -> model -> loss -> evaluator)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from data_tools.make_shapes_dataset import make_dataset
from detlab.data.segmentation_example import MASK_KEY, decode_segmentation_example
from detlab.data.tf_example import decode_example, decode_extras


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes_seg")
  make_dataset(str(out), num_train=4, num_val=2, num_shards=1, workers=1, semantic_maps=True)
  return out


def test_semantic_maps_are_the_instance_masks_painted_with_their_category(shapes):
  for record in tf.data.TFRecordDataset(str(shapes / "train-00000-of-00001.tfrecord")):
    seg = decode_segmentation_example(record)
    det, extras = decode_example(record), decode_extras(record)
    masks, classes = extras["masks"].numpy(), det["classes"].numpy()
    expected = (masks * classes[:, None, None]).sum(0)  # visible masks never overlap
    assert masks.sum(0).max() <= 1
    np.testing.assert_array_equal(seg["labels"].numpy(), expected)
    assert set(np.unique(expected)) <= {0, 1, 2, 3, 4} and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(seg["image"].numpy(), det["image"].numpy())


def test_without_the_flag_records_carry_no_label_map(tmp_path):
  make_dataset(str(tmp_path), num_train=1, num_val=1, num_shards=1, workers=1)
  record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "train-00000-of-00001.tfrecord"))))
  example = tf.train.Example.FromString(record.numpy())
  assert MASK_KEY not in example.features.feature


def test_one_segmentation_step_end_to_end(shapes):
  from detlab.backbones.efficientnet import efficientnet_b0
  from detlab.data.segmentation_input import SegmentationInputConfig
  from detlab.data.segmentation_input import make_dataset as seg_dataset
  from detlab.evaluation.segmentation import SegmentationEvaluator
  from detlab.models.segmentation import segmenter
  from detlab.segmentation.loss import SegmentationLoss
  keras.utils.set_random_seed(0)  # one model whatever ran before in this process
  model = segmenter(efficientnet_b0, num_classes=5, image_size=64, fpn_width=16, fpn_cells=1,
                    head_width=16, head_repeats=1)
  train = seg_dataset(SegmentationInputConfig(file_pattern=str(shapes / "train-*"),
                                              image_size=64), batch_size=2, seed=0)
  batch = next(iter(train))
  with tf.GradientTape() as tape:
    loss = SegmentationLoss()(model(batch["images"], training=True), batch["labels"])
  grads = tape.gradient(loss["total"], model.trainable_variables)
  assert np.isfinite(loss["total"].numpy()) and loss["total"].numpy() > 0
  assert all(g is not None for g in grads)
  evaluator = SegmentationEvaluator(5)
  config = SegmentationInputConfig(file_pattern=str(shapes / "val-*"), is_training=False,
                                   image_size=64)
  correct = 0
  for b in seg_dataset(config, batch_size=2):
    logits = model(b["images"], training=False)
    evaluator.update(logits, b["original_labels"], b["image_info"])
    correct += _correct_pixels(logits.numpy(), b["image_info"].numpy(),
                               b["original_labels"].numpy())
  result = evaluator.result()
  assert result["num_images"] == 2
  originals = [decode_segmentation_example(r)["labels"].numpy()
               for r in tf.data.TFRecordDataset(str(shapes / "val-00000-of-00001.tfrecord"))]
  total = sum(m.size for m in originals)
  assert result["num_valid_pixels"] == total  # original resolution
  assert result["pixel_accuracy"] == pytest.approx(correct / total, abs=1e-9)


def _correct_pixels(logits, image_info, labels) -> int:
  """Pixels whose class is right at original resolution, computed here from the model's logits:
  the resized (unpadded) region of each image, bilinear back to the original size, argmax."""
  correct = 0
  for i in range(len(logits)):
    (height, width), (resized_h, resized_w) = image_info[i, 0], image_info[i, 1]
    region = logits[i, :int(np.ceil(resized_h)), :int(np.ceil(resized_w))]
    full = tf.image.resize(region[None], [int(height), int(width)], method="bilinear")[0]
    truth = labels[i, :int(height), :int(width)].reshape(full.shape[:2])
    correct += int(np.sum((np.argmax(full.numpy(), -1) == truth) & (truth != 255)))
  return correct
