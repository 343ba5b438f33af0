r"""Imports a TF-slim checkpoint (GoogLeNet, BN-Inception, Inception v3) into a detlab
backbone checkpoint.

  python -m data_tools.import_slim_checkpoint --checkpoint=inception_v1.ckpt \
      --backbone=inception_v1 --output_dir=/tmp/googlenet_slim

then fine-tune a detector from it (TF-slim's GoogLeNet and BN-Inception differ from the
papers' networks; the binding builds TF-slim's, see detlab.backbones.slim_import):
  python -m detlab.train --gin_file=efficientdet_inception_v1.gin \
      --gin_bindings="train.init_checkpoint='/tmp/googlenet_slim'" \
      --gin_bindings="train.init_mode='backbone'" \
      --gin_bindings="inception_v1.variant='slim'" ...

Backbones: inception_v1 (binding `inception_v1.variant='slim'`), inception_v2
(`inception_v2.stem='separable'`), inception_v3 (none). Inputs in [-1, 1], as TF-slim's
inception preprocessing: the backbone's `input_convention`. Every variable must map (the aux
head and optimizer/EMA slots are skipped) with equal shapes, or the tool stops naming them.
"""
from absl import app, flags, logging

from detlab.backbones import backbone_checkpoint, slim_import

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "TF-slim checkpoint prefix (or its directory).")
  flags.DEFINE_string("backbone", None, "inception_v1, inception_v2 or inception_v3.")
  flags.DEFINE_string("output_dir", None, "Where to write the backbone checkpoint.")
  flags.mark_flags_as_required(["checkpoint", "backbone", "output_dir"])


def import_slim(checkpoint: str, backbone: str, output_dir: str) -> str:
  """The tool's work; returns the checkpoint prefix written."""
  if backbone not in slim_import.SLIM_BUILDER_KWARGS:
    raise ValueError(f"--backbone must be one of {sorted(slim_import.SLIM_BUILDER_KWARGS)}, "
                     f"got {backbone!r}.")
  kwargs = slim_import.SLIM_BUILDER_KWARGS[backbone]
  classifier = backbone_checkpoint.build_classifier(
      backbone, slim_import.slim_num_classes(checkpoint, backbone), **kwargs)
  copied = slim_import.import_slim_checkpoint(classifier, checkpoint, backbone)
  logging.info("Copied %d TF-slim conv units from %s.", len(copied), checkpoint)
  extractor = backbone_checkpoint.extractor_from_classifier(backbone, classifier, **kwargs)
  prefix = backbone_checkpoint.save_backbone_checkpoint(
      backbone, extractor, output_dir, source=f"TF-slim {checkpoint}", builder_kwargs=kwargs)
  bindings = "".join(f" {backbone}.{k}={v!r}" for k, v in kwargs.items())
  print(f"Wrote {prefix} ({len(copied)} TF-slim units). Fine-tune with "
        f"train.init_checkpoint='{output_dir}' train.init_mode='backbone'{bindings}.",
        flush=True)
  return prefix


def main(argv) -> None:
  del argv
  import_slim(FLAGS.checkpoint, FLAGS.backbone, FLAGS.output_dir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
