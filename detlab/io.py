"""detlab's one way to write a file: text, strict JSON and PNG, whole or not at all, on any
tf.io.gfile file system (local, gs://, ram://, ...).

Every write goes to `<path>.<random>.tmp` first and is renamed over `path`: a reader never sees
half a file (a crash mid-write leaves the old one), concurrent writers never interleave, and
file systems that append when a file is opened for writing again (ram://) get a whole file.
PIL writes local files only, so PNGs are encoded in memory and written through gfile.
"""
import io
import json
import math
import uuid

import numpy as np
import tensorflow as tf


def write_bytes(path: str, data: bytes | str) -> None:
  """Writes `data` (bytes, or text as UTF-8) to `path` atomically where the file system can
  rename atomically (local, ram://; gs:// renames are copy + delete)."""
  temporary = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
  with tf.io.gfile.GFile(temporary, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  try:
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except tf.errors.OpError:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
    raise


write_text = write_bytes  # text is written as UTF-8; the name says what a caller means


def strict(value):
  """NaN and infinities -> None (JSON null), numpy scalars -> Python numbers, keys -> str:
  what json.dumps(allow_nan=False) accepts and every JSON reader parses."""
  if isinstance(value, dict):
    return {str(k): strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  if isinstance(value, np.ndarray):
    return strict(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
    return strict(value.item())
  return value


def write_json(path: str, record, indent: int | None = 1) -> None:
  """Strict JSON (see `strict`) at `path`."""
  write_bytes(path, json.dumps(strict(record), indent=indent, allow_nan=False))


def png_bytes(image) -> bytes:
  """A PIL image or a uint8 [H, W, 3] array, encoded as PNG."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if not isinstance(image, Image.Image):
    array = np.asarray(image)
    if array.dtype != np.uint8:
      raise ValueError(f"write_png needs a uint8 image, got {array.dtype}.")
    image = Image.fromarray(array)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def write_png(path: str, image) -> None:
  """A PIL image or uint8 [H, W, 3] array as a PNG at `path`."""
  write_bytes(path, png_bytes(image))


def read_png(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB of the PNG (or any image PIL reads) at `path`."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(path, "rb") as f:
    return np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
