"""What an image task's batches are, as small picklable callables for worker processes.

Each maps an index (a training step, or a minibatch's place in a diagnostic round) to this
process's rows of that batch, reading them from a `sources.Source`. Every example's host
augmentation is seeded by (seed, step, [stream, k,] its place in the *global* batch), so a
batch is the same on any number of processes and workers. This module imports no JAX: the
workers that unpickle these import only the data modules.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from invmeasure.data import batching, sources

# Marks the host seeds of diagnostic minibatches apart from those of training batches.
DIAGNOSTIC_STREAM = 1


@dataclasses.dataclass(frozen=True)
class Reader:
  """Reads this process's share of global batches from `source`."""
  source: sources.Source
  process_index: int = 0
  process_count: int = 1

  def read(self, indices: np.ndarray, augment_seed: tuple[int, ...] | None) -> dict:
    """This process's rows of the global batch `indices` (last axis: the batch)."""
    local = batching.process_slice(indices, self.process_index, self.process_count)
    places = batching.process_slice(np.arange(indices.shape[-1]), self.process_index,
                                    self.process_count)
    return self.source.read(local, augment_seed, places)


@dataclasses.dataclass(frozen=True)
class TrainRead:
  """Step -> this process's rows of its training batch (random crops from (seed, step))."""
  reader: Reader
  seed: int
  batch_size: int
  num_examples: int

  def __call__(self, step: int) -> dict:
    step = int(step)
    indices = batching.train_indices(self.seed, step, self.batch_size, self.num_examples)
    return self.reader.read(indices, (self.seed, step))


@dataclasses.dataclass(frozen=True)
class DiagnosticRead:
  """k -> this process's rows of minibatch k of the round at `step` (`indices[k]`),
  augmented from (seed, step, stream, k) if `augment`, else center crops."""
  reader: Reader
  seed: int
  step: int
  indices: np.ndarray  # [num_minibatches, batch_size]
  augment: bool

  def __call__(self, k: int) -> dict:
    k = int(k)
    seed = (self.seed, self.step, DIAGNOSTIC_STREAM, k) if self.augment else None
    return self.reader.read(self.indices[k], seed)
