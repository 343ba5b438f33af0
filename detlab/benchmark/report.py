"""What a benchmark prints: the machine the timings came from, derived ratios, the table."""
import os

import tensorflow as tf

# CPU features that change which kernels TF picks (oneDNN's default, native bf16 arithmetic).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def machine_description() -> str:
  """What the timings were measured on: CPU model, cores, the ISA flags that matter, GPUs and
  the oneDNN setting; timings from machines that differ here are not comparable."""
  model, flags_present = "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
          model = value.strip()
        elif key.strip() == "flags" and not flags_present:
          flags_present = set(value.split())
  except OSError:  # not Linux: the model name stays unknown
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  isa = " ".join(f for f in _CPU_FLAGS if f in flags_present) or "flags unknown"
  gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
  onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TF default")
  return (f"{model}, {cores} cores, {isa}; GPUs: {', '.join(gpus) or 'none'}; "
          f"TF_ENABLE_ONEDNN_OPTS={onednn}")


def with_derived_keys(out: dict) -> dict:
  """Adds the fraction of the matmul peak and, when anything was timed, the machine."""
  if "gmacs" in out and "matmul_gflops" in out and "infer_img_s_bs8" in out:
    out["fraction_of_matmul_peak_bs8"] = (
        2 * out["gmacs"] * out["infer_img_s_bs8"] / out["matmul_gflops"])
  if any("img_s" in key or key.endswith("_ms") or key == "matmul_gflops" for key in out):
    out["machine"] = machine_description()
  return out


def format_table(result: dict) -> str:
  units = {"params": "", "gmacs": "G multiply-adds", "matmul_gflops": "GFLOP/s fp32",
           "postprocess_ms": "ms/image", "mask_gmacs": "G multiply-adds (100 boxes)",
           "mask_ms_bs1": "ms/image (100 boxes)",
           "mask_over_network_bs1": "x the network's time (batch 1)",
           "mask_over_network_gmacs": "x the network's multiply-adds", "fraction_of_matmul_peak_bs8": "of matmul peak",
           "input_over_train": "x the training step",
           "detlab_over_keras_fit": "x keras model.fit"}
  lines = []
  for key, value in result.items():
    text = f"{value:,}" if isinstance(value, int) else (
        f"{value:.3f}" if isinstance(value, float) else str(value))
    unit = units.get(key, "images/s" if "img_s" in key else "")
    lines.append(f"{key:30s} {text:>14s} {unit}")
  return "\n".join(lines)
