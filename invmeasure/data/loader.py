"""Batches made by worker processes, still a pure function of their index.

`read(i)` (a picklable callable) makes batch `i` from `i` alone: which examples, and every
example's randomness. grain's `MapDataset.range(first, stop).map(read)` with `mp_prefetch`
hands whole batches to `num_workers` processes (started by spawn, so they share nothing with
this process but what `read` pickles) and returns them in order, so what a batch holds does
not depend on the number of workers, on timing, or on where a stream started: a resumed
run starts a stream at its restored step and reads what an uninterrupted one read, with no
iterator state to checkpoint. `num_workers=0` makes each batch in the calling thread.
A worker makes its batch's large arrays in shared memory (`batch_array`), which grain hands
to this process by name: no copy on either side.

A worker that raises passes its exception on; one that dies (killed, out of memory) stops
the read with one line (`DataWorkerError`) instead of waiting for it forever.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from invmeasure.errors import TrainingError


# Batches each worker makes ahead of the one asked for.
BUFFER = 2


class DataWorkerError(TrainingError):
  """A data worker process died."""


# True in a data worker process (set by `_InWorker` before its first batch).
_IN_WORKER = False


def batch_array(shape: tuple[int, ...], dtype) -> np.ndarray:
  """An empty array for a batch being made: in shared memory in a worker process, so it
  reaches the trainer without a copy; a plain array in the calling thread."""
  if not _IN_WORKER:
    return np.empty(shape, dtype)
  from grain.multiprocessing import SharedMemoryArray
  return SharedMemoryArray(shape, dtype)


def release(array: np.ndarray) -> None:
  """Frees `batch_array`'s shared memory when the batch is abandoned (an error while
  making it); nothing for a plain array."""
  if getattr(array, "shm", None) is not None:
    array.shm.unlink()  # the name goes now; the memory when the array is collected


@dataclasses.dataclass(frozen=True)
class _InWorker:
  """`read` as a worker process runs it: its batches in shared memory."""
  read: Callable[[int], dict]

  def __call__(self, index: int) -> dict:
    global _IN_WORKER
    _IN_WORKER = True
    return self.read(index)


def available_cores() -> int:
  """The cores this process may run on (its affinity mask: a SLURM task's share)."""
  return len(os.sched_getaffinity(0))


def _stream(read: Callable[[int], dict], first: int, stop: int, num_workers: int,
            buffer: int):
  import grain
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain reads its own absl flags; outside an absl app
    flags.FLAGS.mark_as_parsed()
  # One batch at a time in each worker (grain's default: 16 threads, 500 elements ahead).
  dataset = grain.MapDataset.range(first, stop).map(_InWorker(read)).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return iter(dataset.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=buffer)))


def _next(iterator) -> dict:
  try:
    return next(iterator)
  except RuntimeError as error:  # grain's words for a worker that exited
    if "terminated unexpectedly" in str(error):
      raise DataWorkerError(f"a data worker process died ({error}); rerun to resume, or lower "
                            "config.data_workers if it ran out of memory") from None
    raise


class Batches:
  """Batch `i` for i = first, first + 1, ...: streamed by workers in order, one per call.

  `get(i)` for the next index takes the stream's next batch; any other index restarts the
  stream there (what a resume or a jump back does). `stop` bounds the indices.
  """

  def __init__(self, read: Callable[[int], dict], stop: int, num_workers: int,
               buffer: int = BUFFER):
    self._read, self._stop = read, stop
    self._workers, self._buffer = num_workers, buffer
    self._iterator, self._next_index = None, None

  def get(self, index: int) -> dict:
    if not self._workers:
      return self._read(index)
    if index != self._next_index:
      self.close()
      self._iterator = _stream(self._read, index, self._stop, self._workers, self._buffer)
    self._next_index = index + 1
    return _plain(_next(self._iterator))

  def close(self) -> None:
    """Stops the workers (they also stop when this object is collected)."""
    iterator, self._iterator, self._next_index = self._iterator, None, None
    if iterator is not None and hasattr(iterator, "close"):
      iterator.close()


def read_all(read: Callable[[int], dict], count: int, num_workers: int) -> list[dict]:
  """[read(0), ..., read(count - 1)], made by `num_workers` processes (0: this thread)."""
  if not num_workers or count <= 1:
    return [read(i) for i in range(count)]
  iterator = _stream(read, 0, count, min(num_workers, count), 1)
  try:
    return [_plain(_next(iterator)) for _ in range(count)]
  finally:
    if hasattr(iterator, "close"):
      iterator.close()


def _plain(batch: dict) -> dict:
  """Plain numpy views of grain's shared-memory arrays (no copy; the memory lives while
  they do)."""
  return {k: np.asarray(v) for k, v in batch.items()}
