"""On-device preprocessing: uint8 images in, normalised float images out."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Training-batch augmentations a config may name (`config.augmentation`).
AUGMENTATIONS = ("none", "crop_flip", "shift_noise")

# Per-channel mean and std of the training images, in 0..255 units.
_STATS = {
    "digits": ((76.2,), (96.1,)),
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "imagenet2012": ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
}


def normalize(dataset: str, images: jax.Array, dtype=jnp.float32) -> jax.Array:
  mean, std = (jnp.asarray(s, dtype) for s in _STATS[dataset])
  return (images.astype(dtype) - mean) / std


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """CIFAR augmentation: pad by `padding` (zeros), crop back at random, flip half."""
  n, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
  images = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Moves each image by up to `max_shift` pixels each way (uniform), filling with zeros."""
  n, h, w, c = images.shape
  pad = max_shift
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def per_example(augment, keys: jax.Array, images: jax.Array) -> jax.Array:
  """`augment(key, batch)` applied to each example with its own key: the result of one
  example does not depend on which others share its batch or its device."""
  return jax.vmap(lambda key, image: augment(key, image[None])[0])(keys, images)
