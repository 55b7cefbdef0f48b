"""Language-model batches in Transformer-XL's order: pure functions of the step.

A split's token stream is cut into `batch_size` contiguous rows (the remainder is dropped):
row b holds tokens [b * R, (b + 1) * R) with R = num_tokens // batch_size. Step t reads
positions [t * tgt_len, (t + 1) * tgt_len) of every row as inputs and the positions one
further as targets, so row b of step t + 1 continues row b of step t, which the
segment-level memory relies on. A training epoch is the (R - 1) // tgt_len full segments
and the next epoch starts again at position 0 (memory empty); evaluation also reads the
final shorter segment, padded and masked, so every token but a row's first is predicted
once, as in the original's evaluation.

Nothing here keeps iterator state: the batch of step t is read directly, so a resumed run
reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

import numpy as np

from invmeasure.errors import ConfigError

ReadChunks = Callable[[Sequence[int]], Sequence[np.ndarray]]


class TokenStream:
  """A split's token ids, stored in chunks of `chunk_length`, read by windows.

  Every chunk but the last has `chunk_length` tokens. The chunks read by one call are
  kept until the next, so consecutive steps (which mostly read the same chunks) read each
  chunk about once.
  """

  def __init__(self, num_tokens: int, chunk_length: int, read_chunks: ReadChunks):
    if num_tokens < 1 or chunk_length < 1:
      raise ValueError(f"need tokens and a positive chunk length, got {num_tokens}, {chunk_length}")
    self.num_tokens = num_tokens
    self.chunk_length = chunk_length
    self._read_chunks = read_chunks
    self._cache: dict[int, np.ndarray] = {}

  @classmethod
  def from_array(cls, ids: np.ndarray, chunk_length: int = 4096) -> TokenStream:
    """A stream held in memory (e.g. for tests or a small corpus)."""
    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    return cls(len(ids), chunk_length,
               lambda indices: [ids[i * chunk_length:(i + 1) * chunk_length] for i in indices])

  @classmethod
  def from_tfds(cls, split: str, data_dir: str | None = None) -> TokenStream:
    """A split of the prepared `wikitext103` TFDS data set, read through ArrayRecord."""
    from invmeasure.data import wikitext103
    builder = wikitext103.Wikitext103(data_dir=data_dir)
    try:
      source = builder.as_data_source(split)
      metadata = builder.info.metadata
      num_tokens, chunk_length = metadata["num_tokens"][split], metadata["chunk_length"]
    except Exception as error:  # TFDS raises several types for a missing data set
      raise ConfigError(
          f"config.dataset='wikitext103' split {split!r} is not prepared in "
          f"{os.fspath(builder.data_dir)} ({type(error).__name__}); prepare it with "
          + wikitext103.build_command("DIR", os.fspath(builder.data_dir_root))) from None
    stream = cls(num_tokens, chunk_length,
                 lambda indices: [ex["ids"] for ex in source.__getitems__(list(indices))])
    if len(source) != stream.num_chunks:
      raise ConfigError(f"wikitext103 {split!r} in {os.fspath(builder.data_dir)} has "
                        f"{len(source)} chunks, its metadata implies {stream.num_chunks}; "
                        "prepare it again")
    return stream

  @property
  def num_chunks(self) -> int:
    return math.ceil(self.num_tokens / self.chunk_length)

  def __len__(self) -> int:
    return self.num_tokens

  def _chunk_size(self, index: int) -> int:
    return min(self.chunk_length, self.num_tokens - index * self.chunk_length)

  def _chunks(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The chunks at `indices`, from the previous call's where it has them."""
    missing = [i for i in indices if i not in self._cache]
    read = dict(zip(missing, self._read_chunks(missing))) if missing else {}
    for i, chunk in read.items():
      if len(chunk) != self._chunk_size(i):
        raise ValueError(f"chunk {i} has {len(chunk)} tokens, expected {self._chunk_size(i)}")
    chunks = {i: self._cache[i] if i in self._cache else np.asarray(read[i], np.int32)
              for i in indices}
    self._cache = chunks
    return chunks

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """[len(starts), length] int32: the tokens [s, s + length) for each start s."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if length < 1 or (starts.size and (starts.min() < 0
                                       or starts.max() + length > self.num_tokens)):
      raise IndexError(f"windows of {length} at {starts.min()}..{starts.max()} are not "
                       f"inside a stream of {self.num_tokens} tokens")
    first, last = starts // self.chunk_length, (starts + length - 1) // self.chunk_length
    needed = sorted({int(i) for f, l in zip(first, last) for i in range(f, l + 1)})
    chunks = self._chunks(needed)
    out = np.empty((len(starts), length), dtype=np.int32)
    for row, (start, f, l) in enumerate(zip(starts, first, last)):
      joined = np.concatenate([chunks[int(i)] for i in range(f, l + 1)])
      offset = start - f * self.chunk_length
      out[row] = joined[offset:offset + length]
    return out


@dataclasses.dataclass(frozen=True)
class Segments:
  """How a split's stream is read: `batch_size` rows, `tgt_len` tokens a step.

  `mem_len` is the model's memory length, carried here so that `memory_length` can tell
  how much of the memory holds this pass's earlier segments. `partial_last` (evaluation)
  adds the final shorter segment of each row, padded to `tgt_len` and masked.
  """
  num_tokens: int
  batch_size: int
  tgt_len: int
  mem_len: int = 0
  partial_last: bool = False

  def __post_init__(self):
    if self.batch_size < 1 or self.tgt_len < 1 or self.mem_len < 0:
      raise ValueError(f"need batch_size >= 1, tgt_len >= 1, mem_len >= 0, got "
                       f"{self.batch_size}, {self.tgt_len}, {self.mem_len}")
    if self.num_steps < 1:
      raise ValueError(f"{self.num_tokens} tokens in {self.batch_size} rows of "
                       f"{self.row_length} make no segment of {self.tgt_len} (plus its target)")

  @property
  def row_length(self) -> int:
    """Tokens in each row (the stream's last num_tokens % batch_size are dropped)."""
    return self.num_tokens // self.batch_size

  @property
  def num_steps(self) -> int:
    """Steps in one pass: full segments only, or also the final shorter one."""
    predicted = self.row_length - 1  # a row's first token is never a target
    if self.partial_last:
      return max(0, math.ceil(predicted / self.tgt_len))
    return max(0, predicted // self.tgt_len)

  def position(self, step: int) -> int:
    """The segment a step reads: training wraps around each epoch; evaluation does not."""
    if self.partial_last:
      if not 0 <= step < self.num_steps:
        raise IndexError(f"evaluation has steps 0..{self.num_steps - 1}, not {step}")
      return step
    if step < 0:
      raise IndexError(f"step {step} is negative")
    return step % self.num_steps

  def num_targets(self, step: int) -> int:
    """Real (unpadded) targets per row at `step`: `tgt_len` except at a final short one."""
    return min(self.tgt_len, self.row_length - 1 - self.position(step) * self.tgt_len)

  def memory_length(self, step: int) -> int:
    """How many memory positions hold earlier tokens of this row at `step` (0 at the start
    of each epoch or evaluation pass, when the memory must be empty)."""
    return min(self.mem_len, self.position(step) * self.tgt_len)


def train_segments(num_tokens: int, batch_size: int, tgt_len: int,
                   mem_len: int = 0) -> Segments:
  """Training: full segments only, epoch after epoch."""
  return Segments(num_tokens, batch_size, tgt_len, mem_len, partial_last=False)


def eval_segments(num_tokens: int, batch_size: int, tgt_len: int,
                  mem_len: int = 0) -> Segments:
  """Validation or test: one pass over every row, the last segment padded and masked."""
  return Segments(num_tokens, batch_size, tgt_len, mem_len, partial_last=True)


def process_rows(batch_size: int, process_index: int, process_count: int) -> range:
  """The rows of the global batch that process `process_index` reads."""
  if batch_size % process_count:
    raise ValueError(f"batch of {batch_size} rows does not split over {process_count} processes")
  per = batch_size // process_count
  return range(process_index * per, (process_index + 1) * per)


def segment_batch(stream: TokenStream, segments: Segments, step: int,
                  process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
  """This process's rows of step `step`: `inputs` and `targets`, int32 [rows, tgt_len].

  With `segments.partial_last` there is also `mask` (float32, 1 where a target is real);
  padded positions hold id 0 and come after the real ones, so causal attention keeps them
  from changing the real positions' predictions.
  """
  rows = process_rows(segments.batch_size, process_index, process_count)
  position = segments.position(step)
  length = segments.num_targets(step)
  starts = np.asarray(rows, dtype=np.int64) * segments.row_length + position * segments.tgt_len
  window = stream.windows(starts, length + 1)
  pad = ((0, 0), (0, segments.tgt_len - length))
  batch = {"inputs": np.pad(window[:, :-1], pad), "targets": np.pad(window[:, 1:], pad)}
  if segments.partial_last:
    real = (np.arange(segments.tgt_len) < length).astype(np.float32)
    batch["mask"] = np.broadcast_to(real, (len(rows), segments.tgt_len)).copy()
  return batch
