"""A detector built from one of detlab's `efficientdet_<name>.gin` files, as the scaling tests
of the D-series and the Lite series build theirs."""
import gin
import tf_keras as keras

from detlab import config
from detlab.benchmark import count_gmacs


def build_from_gin(name: str, size: int | None = None) -> tuple:
  """(model built from efficientdet_<name>.gin at `size` (None: its native size), the size)."""
  gin.clear_config()
  keras.backend.clear_session()
  try:
    config.parse_gin([f"efficientdet_{name}.gin"],
                     [] if size is None else [f"IMAGE_SIZE = {size}"])
    size = gin.query_parameter("%IMAGE_SIZE")
    return gin.query_parameter("DetectionTask.model_fn").scoped_configurable_fn(), size
  finally:
    gin.clear_config()


def native_gmacs(name: str) -> float:
  """Multiply-adds (G) of efficientdet_<name>.gin's detector at its native size; the model
  is dropped and the Keras session cleared before returning (the large ones are heavy)."""
  model, size = build_from_gin(name)
  gmacs = count_gmacs(model, size)
  del model
  keras.backend.clear_session()
  return gmacs
