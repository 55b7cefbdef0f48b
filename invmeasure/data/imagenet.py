"""ImageNet preprocessing on the host from decoded images (TFDS's own decode): the path
`TfdsSource` reads cifar10-style, kept for decoded sources and as the benchmark's baseline.
`jpeg` decodes only what each crop needs and `sources.JpegSource` reads through it.

Training batches get a random-resized crop (scale 0.08-1, aspect ratio 3/4-4/3, as
Inception / torchvision) and a horizontal flip; evaluation and the diagnostics' minibatches
get the standard resize of the short side to 256 and a 224 center crop. Randomness is per
example from (seed, step, position), so a resumed run crops exactly as before.
"""

from __future__ import annotations

from concurrent import futures

import numpy as np
from PIL import Image

from invmeasure.data import jpeg

IMAGE_SIZE = jpeg.IMAGE_SIZE
RESIZE_SIZE = jpeg.RESIZE_SIZE
_POOL = futures.ThreadPoolExecutor(8)  # PIL releases the GIL while resizing


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        size: int = IMAGE_SIZE) -> np.ndarray:
  top, left, h, w = (int(v) for v in jpeg.random_window(*image.shape[:2], rng))
  crop = Image.fromarray(image[top:top + h, left:left + w])
  out = np.asarray(crop.resize((size, size), Image.BILINEAR))
  return out[:, ::-1] if rng.random() < 0.5 else out


def center_crop(image: np.ndarray, size: int = IMAGE_SIZE,
                resize: int = RESIZE_SIZE) -> np.ndarray:
  height, width = image.shape[:2]
  scale = resize / min(height, width)
  h, w = max(size, round(height * scale)), max(size, round(width * scale))
  resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  top, left = (h - size) // 2, (w - size) // 2
  return resized[top:top + size, left:left + size]


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2 or image.shape[-1] == 1:
    image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
  return image


def preprocess(images: list[np.ndarray], augment_seed: tuple[int, ...] | None) -> np.ndarray:
  """Stacks crops of `images`: random (training) when a seed is given, else center."""
  if augment_seed is None:
    crops = _POOL.map(lambda im: center_crop(_rgb(im)), images)
  else:
    crops = _POOL.map(
        lambda args: random_resized_crop(_rgb(args[1]), np.random.default_rng([*augment_seed, args[0]])),
        enumerate(images))
  return np.stack(list(crops))
