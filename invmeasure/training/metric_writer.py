"""Metric rows as JSON lines: one object per line, appended and flushed one at a time.

A run killed mid-write can leave a last line without its newline. `read_metrics` skips
such a line, and `MetricWriter` cuts it off before appending, so a resumed run continues
on a clean line.

On object storage (`gs://`), which cannot append, the writer keeps the file's lines and
uploads them whole at each `flush()` (the driver flushes before every checkpoint) and at
`close()`; rows written after the last flush are lost in a crash, as the driver drops
rows after the last checkpoint on resume anyway.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from invmeasure.training import storage


def _to_builtin(value: Any) -> Any:
  """Turns NumPy and JAX scalars (and size-1 arrays) into plain Python numbers."""
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, '__array__'):
    array = np.asarray(value)
    if array.size == 1:
      return array.item()
    return array.tolist()
  raise TypeError(f'metric value of type {type(value).__name__} is not JSON serialisable')


def _drop_partial_last_line(path: str) -> None:
  """Truncates `path` after its last newline, if it does not end with one."""
  with open(path, 'rb+') as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b'\n':
      return
    f.seek(0)
    data = f.read()
    f.truncate(data.rfind(b'\n') + 1)


class MetricWriter:
  """Appends metric rows to a JSON-lines file, flushing after every row.

  Use as a context manager, or call `close()` when done:

      with MetricWriter(os.path.join(workdir, 'metrics.jsonl')) as writer:
        writer.write({'step': 1, 'epoch': 0.01, 'train_loss': 2.3})
  """

  def __init__(self, path: str | os.PathLike):
    """Opens `path` for appending, creating its directory and the file as needed."""
    self.path = path
    self._file = None
    self._lines: list[str] | None = None  # object storage: the whole file, to upload
    if storage.is_remote(path):
      file = storage.path(path)
      text = file.read_text() if file.exists() else ''
      self._lines = [text[:text.rfind('\n') + 1]]
      self._uploaded, self._closed = True, False
      return
    directory = os.path.dirname(path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    if os.path.exists(path):
      _drop_partial_last_line(path)
    self._file = open(path, 'a', encoding='utf-8')

  def write(self, row: Mapping[str, Any]) -> None:
    """Appends one row (a flat mapping of JSON-compatible values) and flushes it."""
    line = json.dumps(dict(row), default=_to_builtin, allow_nan=True)
    if self._lines is not None:
      if self._closed:
        raise ValueError(f'write to {self.path} after close()')
      self._lines.append(line + '\n')
      self._uploaded = False
      return
    with storage.naming(self.path):
      self._file.write(line + '\n')
      self._file.flush()

  def flush(self) -> None:
    """Makes every row written so far durable: locally each row already is; on object
    storage the file is uploaded whole."""
    if self._lines is not None and not self._uploaded:
      with storage.naming(self.path):
        storage.path(self.path).write_text(''.join(self._lines))
      self._uploaded = True

  def close(self) -> None:
    """Flushes and closes the file; further writes raise."""
    if self._lines is not None:
      self.flush()
      self._closed = True
    else:
      with storage.naming(self.path):
        self._file.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads every row of a JSON-lines metric file (local or on object storage), in order.

  A last line that is cut short (no newline and not valid JSON, as a crash leaves it)
  is skipped; a bad line anywhere else raises `ValueError` naming the file and line.
  """
  with storage.path(path).open('r') as f:
    lines = f.read().split('\n')
  rows = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines):
        break
      raise ValueError(f'{path}:{number}: not a JSON object ({error.msg})') from None
  return rows
