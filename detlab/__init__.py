"""detlab: EfficientDet-style object detection in TensorFlow 2 (tf_keras)."""
import os
import platform
import sys

__version__ = "0.1.0"

# TensorFlow turns its oneDNN CPU rewrites on by default only on CPUs with AVX-512 (or
# similar); on AVX2-only x86 CPUs they are off, and detlab then trains D0 at 0.83 instead of
# 1.8 img/s and infers at batch 8 at 5.1 instead of 11.4 img/s (README, speed table). So
# detlab turns them on for x86 unless the user chose (`TF_ENABLE_ONEDNN_OPTS=0` keeps them
# off). The variable is read when TensorFlow is imported, so this only takes effect when
# detlab is imported first, as in every `python -m detlab.*` command. The batch-1 slow path
# that oneDNN has with a fused conv+BN is dodged in detlab.layers.normalization.
if "tensorflow" not in sys.modules and platform.machine().lower() in ("x86_64", "amd64"):
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
