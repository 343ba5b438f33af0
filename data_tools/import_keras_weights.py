r"""Imports a tf_keras.applications `.h5` weights file into a detlab backbone checkpoint.

  python -m data_tools.import_keras_weights --h5=efficientnetb0.h5 \
      --backbone=efficientnet_b0 --output_dir=/tmp/b0_keras

then fine-tune a detector from it:
  python -m detlab.train --gin_file=efficientdet_d0.gin \
      --gin_bindings="train.init_checkpoint='/tmp/b0_keras'" \
      --gin_bindings="train.init_mode='backbone'" ...

The file must be the classifier form (with `predictions`, as `Model.save_weights` or keras'
`*_tf_kernels.h5` downloads hold it; the number of classes is read from it). Backbones with
keras apps: efficientnet_b0..b7, efficientnetv2_b0..b3/s/m/l, inception_v3,
inception_resnet_v2, xception. Every weighted layer must match by name and shape, or the tool
stops with the list of differences. The input the weights expect (keras' preprocessing) is
the backbone's `detlab.backbones.input_convention`, which detlab's pipelines apply.
"""
import os
import tempfile

from absl import app, flags, logging
import h5py
import tensorflow as tf

from detlab.backbones import backbone_checkpoint
from detlab.backbones.weight_import import import_keras_weights

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("h5", None, "The keras weights file (.h5), local or gs://.")
  flags.DEFINE_string("backbone", None, "detlab backbone name, e.g. efficientnet_b0.")
  flags.DEFINE_string("output_dir", None, "Where to write the backbone checkpoint.")
  flags.mark_flags_as_required(["h5", "backbone", "output_dir"])


def h5_num_classes(path: str) -> int:
  """The number of classes of the `predictions` layer in a keras weights file."""
  with h5py.File(path, "r") as f:
    names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs.get("layer_names", [])]
    if "predictions" not in names:
      raise ValueError(
          f"{path} has no `predictions` layer: it looks like a no-top file. Use the keras "
          "weights file with the classifier top (e.g. *_weights_tf_dim_ordering_tf_kernels.h5 "
          "rather than *_notop.h5).")
    kernels = []
    f["predictions"].visititems(
        lambda n, obj: kernels.append(obj.shape) if n.endswith("kernel:0") else None)
  return int(kernels[0][-1])


def import_keras_h5(h5_path: str, backbone: str, output_dir: str) -> str:
  """The tool's work; returns the checkpoint prefix written."""
  if not tf.io.gfile.exists(h5_path):
    raise FileNotFoundError(f"--h5 file not found: {h5_path}")
  with tempfile.TemporaryDirectory() as tmp:
    local = h5_path
    if "://" in h5_path:  # h5py reads local files only
      local = os.path.join(tmp, "weights.h5")
      tf.io.gfile.copy(h5_path, local)
    classifier = backbone_checkpoint.build_classifier(backbone, h5_num_classes(local))
    copied = import_keras_weights(getattr(classifier, "inference_model", classifier), local)
  logging.info("Copied %d layers from %s.", len(copied), h5_path)
  extractor = backbone_checkpoint.extractor_from_classifier(backbone, classifier)
  prefix = backbone_checkpoint.save_backbone_checkpoint(backbone, extractor, output_dir,
                                                        source=f"keras h5 {h5_path}")
  print(f"Wrote {prefix} ({len(copied)} keras layers). Fine-tune with "
        f"train.init_checkpoint='{output_dir}' train.init_mode='backbone'.", flush=True)
  return prefix


def main(argv) -> None:
  del argv
  import_keras_h5(FLAGS.h5, FLAGS.backbone, FLAGS.output_dir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
