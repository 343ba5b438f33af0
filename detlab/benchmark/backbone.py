"""--backbone mode: a registered backbone's ImageNet classifier (include_top=True, 1000
classes) at its paper's resolution, network only (size, multiply-adds, inference speed)."""
import importlib

from absl import app

from detlab.benchmark.report import with_derived_keys
from detlab.benchmark.timing import measure_network


def native_classifier_size(backbone: str) -> int:
  """The paper's evaluation size of a registered classifier: EfficientNet V1/V2 per variant
  ('efficientnet_b3' -> 300), otherwise the family module's NATIVE_SIZE (224 or 299)."""
  from detlab.backbones import BACKBONES, efficientnet, efficientnet_v2
  family, _, variant = backbone.partition("_")
  modules = {"efficientnet": efficientnet, "efficientnetv2": efficientnet_v2}
  if family in modules:
    return modules[family].native_resolution(variant)
  size = getattr(importlib.import_module(BACKBONES[backbone].__module__), "NATIVE_SIZE",
                 None) if backbone in BACKBONES else None
  if size is None:
    raise app.UsageError(f"No native resolution known for {backbone!r}: pass --image_size.")
  return size


def measure_backbone(name: str, wanted, min_seconds: float, image_size: int = 0) -> dict:
  """`measure_network` for a registered backbone's classifier (1000 classes) at `image_size`."""
  from detlab.backbones import BACKBONES
  if name not in BACKBONES:
    raise app.UsageError(f"Unknown --backbone {name!r}; choose from {sorted(BACKBONES)}.")
  size = image_size or native_classifier_size(name)
  model = BACKBONES[name](include_top=True, input_shape=(size, size, 3))
  out = {"model": model.name, "image_size": size}
  out.update(measure_network(model, size, wanted, min_seconds))
  return with_derived_keys(out)
