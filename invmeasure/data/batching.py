"""Which examples make up each batch: pure functions of (seed, step).

Training batches walk a fresh permutation of the training set every epoch (the last
incomplete batch of an epoch is dropped). Diagnostic minibatches are drawn independently
of training, each without replacement, from a key of their own.
"""

from __future__ import annotations

import functools

import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def train_indices(seed: int, step: int, batch_size: int, num_examples: int) -> np.ndarray:
  """Indices of the global training batch of optimizer step `step` (0-based)."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, position = divmod(step, per_epoch)
  order = _epoch_order(seed, epoch, num_examples)
  return order[position * batch_size:(position + 1) * batch_size].copy()


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The epoch's permutation, drawn once (ImageNet's 1.28M take ~44 ms), not every step."""
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.flags.writeable = False
  return order


def diagnostic_indices(seed: int, step: int, num_minibatches: int, batch_size: int,
                       num_examples: int) -> np.ndarray:
  """[num_minibatches, batch_size] indices of fresh minibatches for the round at `step`."""
  rng = np.random.default_rng([seed, step, 1])
  return np.stack([rng.choice(num_examples, batch_size, replace=False)
                   for _ in range(num_minibatches)])


def process_slice(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch (split along the batch axis)."""
  batch = indices.shape[-1]
  if batch % process_count:
    raise ValueError(f"batch of {batch} does not split over {process_count} processes")
  per = batch // process_count
  return indices[..., process_index * per:(process_index + 1) * per]
