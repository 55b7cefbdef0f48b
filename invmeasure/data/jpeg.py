"""ImageNet crops decoded from JPEG bytes, decoding only what the crop needs.

The crop is chosen from the image's header (its size) before any pixel is decoded.
libjpeg-turbo (through simplejpeg) then decodes straight to RGB with its fast integer
IDCT, which is what `tf.io.decode_jpeg` does by default (the same pixels, bit for bit);
where the crop will be shrunk by 2x or more, at 1/2, 1/4 or 1/8 size (DCT scaling), which
costs a fraction of a full decode, so what is left to resize shrinks by less than 2x (or
grows). What libjpeg-turbo refuses (ImageNet's one PNG, a JPEG with a recoverable error)
goes to OpenCV's decoder instead. OpenCV's bilinear warp then samples the window's output
pixels straight from the decoded image, 5-15x faster than Pillow's resize here; without an
antialiasing filter, which a shrink under 2x hardly needs (tf.image.resize has none either).
EXIF orientation is ignored, as TFDS and tf.image ignore it.

Windows are drawn as `imagenet.random_resized_crop` draws them (scale 0.08-1 of the area,
aspect ratio 3/4-4/3 log-uniform, ten tries then a center square, then a flip), from a
`numpy` generator the caller seeds, so a crop is a pure function of its seed.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image

cv2.setNumThreads(1)  # one image per call; parallelism comes from worker processes

IMAGE_SIZE = 224
RESIZE_SIZE = 256
# cv2.imdecode's flags by DCT scale: RGB, EXIF orientation ignored, 1/1 to 1/8 size (the
# REDUCED_GRAYSCALE constants are the bare size bits; REDUCED_COLOR adds BGR to them).
_DECODE_FLAGS = {
    reduce: cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION | size_bits
    for reduce, size_bits in ((1, 0), (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
                              (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                              (8, cv2.IMREAD_REDUCED_GRAYSCALE_8))}


class Window(NamedTuple):
  """A crop in the image's own pixels: rows top..top+height, columns left..left+width."""
  top: float
  left: float
  height: float
  width: float


def random_window(height: int, width: int, rng: np.random.Generator) -> Window:
  """Inception's random-resized-crop window (torchvision's draws, in this order)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return Window(top, left, h, w)
  side = min(height, width)  # fall back to a center square of the whole image
  return Window((height - side) // 2, (width - side) // 2, side, side)


def center_window(height: int, width: int, size: int = IMAGE_SIZE,
                  resize: int = RESIZE_SIZE) -> Window:
  """The `size` center crop of the image resized to a short side of `resize`, in the
  original image's pixels (as `imagenet.center_crop` takes it)."""
  scale = resize / min(height, width)
  h, w = max(size, round(height * scale)), max(size, round(width * scale))
  sy, sx = h / height, w / width
  top, left = (h - size) // 2, (w - size) // 2
  return Window(top / sy, left / sx, size / sy, size / sx)


def dimensions(data: bytes) -> tuple[int, int]:
  """(height, width) of encoded bytes from their header alone."""
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:  # not a JPEG (ImageNet has a PNG), or a header libjpeg-turbo refuses
    width, height = Image.open(io.BytesIO(data)).size
  return height, width


def decode(data: bytes, reduce: int = 1,
           size: tuple[int, int] | None = None) -> np.ndarray | None:
  """[H, W, 3] uint8 RGB of encoded bytes, whatever the file holds (ImageNet has CMYK and
  grayscale JPEGs, and a PNG); a JPEG at 1/`reduce` size (1, 2, 4 or 8); None when the
  bytes cannot be decoded. `size` is (height, width) when the header was read already."""
  try:
    height, width = size or dimensions(data)
    # The smallest of libjpeg-turbo's scales M/8 at least these sizes: exactly 1/reduce.
    return simplejpeg.decode_jpeg(data, "RGB", fastdct=True, min_height=-(-height // reduce),
                                  min_width=-(-width // reduce))
  except ValueError:
    return cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS[reduce])


def crop(data: bytes | np.ndarray, window_fn, size: int = IMAGE_SIZE,
         out: np.ndarray | None = None) -> np.ndarray:
  """[size, size, 3] uint8: the window of an image, resized, mirrored if asked.

  `window_fn(height, width)` gives the window and whether to mirror it left to right.
  `data` is encoded bytes (JPEG, decoded at reduced size where the window allows; PNG)
  or an already decoded [H, W] / [H, W, C] array (TFDS mock data, other image sources).
  The crop is written into `out` (a batch's row) when given.
  """
  if isinstance(data, np.ndarray):
    pixels = data if data.ndim == 2 or data.shape[-1] != 1 else data[..., 0]
    window, flip = window_fn(*pixels.shape[:2])
    scale_y = scale_x = 1.0
  else:
    height, width = dimensions(data)
    window, flip = window_fn(height, width)
    factor = min(window.height, window.width) / size
    reduce = next((r for r in (8, 4, 2) if factor >= r), 1)
    pixels = decode(data, reduce, (height, width))
    if pixels is None:
      raise ValueError(f"cannot decode this image ({len(data)} bytes, {width}x{height} by "
                       "its header)")
    scale_y, scale_x = pixels.shape[0] / height, pixels.shape[1] / width
  # Output pixel centers map to the window's, as Pillow's and OpenCV's resize map them;
  # a mirrored crop maps column x to size - 1 - x, so no second pass flips it.
  sx, sy = size / (window.width * scale_x), size / (window.height * scale_y)
  tx = sx * (0.5 - window.left * scale_x) - 0.5
  row_x = [-sx, 0.0, size - 1 - tx] if flip else [sx, 0.0, tx]
  matrix = np.array([row_x, [0.0, sy, sy * (0.5 - window.top * scale_y) - 0.5]])
  if out is None:
    out = np.empty((size, size, 3), np.uint8)
  if pixels.ndim == 2:  # grayscale arrays: warp the one channel, then repeat it
    out[...] = cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)[..., None]
  else:
    cv2.warpAffine(pixels, matrix, (size, size), dst=out, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)
  return out


def random_crop(data: bytes | np.ndarray, rng: np.random.Generator,
                size: int = IMAGE_SIZE, out: np.ndarray | None = None) -> np.ndarray:
  """A random-resized crop, flipped with probability 1/2, all drawn from `rng`."""
  def window_fn(height: int, width: int) -> tuple[Window, bool]:
    window = random_window(height, width, rng)
    return window, rng.random() < 0.5  # after the window, as imagenet.random_resized_crop

  return crop(data, window_fn, size, out)


def center_crop(data: bytes | np.ndarray, size: int = IMAGE_SIZE,
                resize: int = RESIZE_SIZE, out: np.ndarray | None = None) -> np.ndarray:
  """The evaluation crop: short side resized to `resize`, then the `size` center."""
  return crop(data, lambda h, w: (center_window(h, w, size, resize), False), size, out)
