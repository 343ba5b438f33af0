"""Reading image files as the validator and the converters do: bytes, then a full decode.

No TensorFlow here for local files (the validator starts in a second); remote ones (gs://,
ram://, ...) go through tf.io.gfile, imported only then.
"""
import dataclasses
import io
import os

from PIL import Image, ImageOps


class ImageError(Exception):
  """An image file that is missing or cannot be fully decoded."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def read_bytes(path: str) -> bytes:
  """A local file, or a remote one (gs://, ...) through tf.io.gfile."""
  if "://" in path:
    import tensorflow as tf  # only for remote file systems
    if not tf.io.gfile.exists(path):
      raise ImageError("missing_image", f"no such file: {path}")
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  if not os.path.isfile(path):
    raise ImageError("missing_image", f"no such file: {path}")
  with open(path, "rb") as f:
    return f.read()


@dataclasses.dataclass
class DecodedImage:
  image: Image.Image    # upright, RGB
  format: str           # the file's format as PIL names it: "JPEG", "PNG", ...
  mode: str             # the file's pixel mode: "RGB", "L", "CMYK", "RGBA", ...
  exif_transposed: bool  # EXIF orientation (2..8) was applied


def decode_image(data: bytes, path: str = "", apply_exif: bool = True) -> DecodedImage:
  """Fully decodes an image file's bytes; raises ImageError("corrupt_image", ...) if it can't."""
  image, upright, transposed = open_upright(data, path, apply_exif)
  return DecodedImage(upright.convert("RGB"), str(image.format), image.mode, transposed)


def open_upright(data: bytes, path: str = "", apply_exif: bool = True):
  """(the decoded file, its upright form in the file's own pixel mode, whether an EXIF
  orientation 2..8 was applied); raises ImageError("corrupt_image", ...) naming `path`."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel: a truncated file fails here, not in training
    orientation = image.getexif().get(0x0112, 1)
    transposed = apply_exif and orientation in range(2, 9)
    return image, (ImageOps.exif_transpose(image) if transposed else image), transposed
  except Image.UnidentifiedImageError as e:
    raise ImageError("corrupt_image", f"{path} is not an image file PIL can read") from e
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
    raise ImageError("corrupt_image", f"cannot decode {path}: {type(e).__name__}: {e}") from e


def image_path(image_dir: str, file_name: str) -> str:
  return file_name if "://" in file_name or os.path.isabs(file_name) else (
      os.path.join(image_dir, file_name))
