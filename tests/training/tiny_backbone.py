"""A gin-registered backbone that builds in milliseconds, for training tests, and the gin
bindings of a seconds-long run with it (`tiny_bindings`). Subprocesses load it with the gin
binding `import tests.training.tiny_backbone` (run from the repo root)."""
import gin
import tf_keras as keras

from detlab.backbones.contract import features_model


@gin.register(module="tests.training")
def tiny_test_backbone(input_shape=(None, None, 3), sync_bn: bool = False, **_) -> keras.Model:
  """Four strided 3x3 convs + one BN -> levels 2..5 (8/16/24/32 channels): builds in ms."""
  inputs = keras.Input(shape=input_shape)
  x, endpoints = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs), {}
  x = keras.layers.BatchNormalization(synchronized=sync_bn, name="stem_bn")(x)
  for level, channels in zip(range(2, 6), (8, 16, 24, 32)):
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name=f"conv{level}")(x)
    endpoints[str(level)] = x
  return features_model(inputs, endpoints, 2, 5, name="tiny")


def tiny_bindings(shapes_dir: str, *extra: str) -> list[str]:
  """Gin bindings (on top of efficientdet_d0_shapes.gin) for a seconds-long deterministic run."""
  return [
      f"TRAIN_FILE_PATTERN='{shapes_dir}/train-*'", f"EVAL_FILE_PATTERN='{shapes_dir}/val-*'",
      f"train.label_map_file='{shapes_dir}/label_map.json'",
      f"train.annotation_file='{shapes_dir}/val_annotations.json'",
      "efficientdet.backbone_fn = @tiny_test_backbone", "efficientdet.fpn_width = 16",
      "efficientdet.fpn_cells = 1", "efficientdet.head_repeats = 1", "IMAGE_SIZE = 64",
      "efficientdet.max_level = 5",
      # Deterministic input: no random augmentation (stateful random ops in tf.data maps are
      # not part of the iterator checkpoint), seeded shuffles.
      "train/InputConfig.flip = False", "train/InputConfig.aug_scale_min = 1.0",
      "train/InputConfig.aug_scale_max = 1.0", "train/InputConfig.shuffle_buffer = 32",
      "train.seed = 1", "Schedule.batch_size = 2", "Schedule.train_steps = 6",
      "Schedule.steps_per_loop = 1", "Schedule.log_every_steps = 2",
      "Schedule.checkpoint_every_steps = 2", "train.num_eval_images = 8", *extra]


class StopAfter:
  """Stands in for PreemptionWatcher: 'SIGTERM' arrives after `loops` loops of steps."""

  def __init__(self, loops: int):
    self.loops, self.calls = loops, 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return None

  @property
  def requested(self) -> bool:
    self.calls += 1
    return self.calls >= self.loops
