"""Metric rows as JSON lines: one object per line, appended and flushed one at a time.

A run killed mid-write can leave a last line without its newline. `read_metrics` skips
such a line, and `MetricWriter` cuts it off before appending, so a resumed run continues
on a clean line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np


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

  def __init__(self, path: str):
    """Opens `path` for appending, creating its directory and the file as needed."""
    self.path = path
    directory = os.path.dirname(path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    if os.path.exists(path):
      _drop_partial_last_line(path)
    self._file = open(path, 'a', encoding='utf-8')

  def write(self, row: Mapping[str, Any]) -> None:
    """Appends one row (a flat mapping of JSON-compatible values) and flushes it."""
    line = json.dumps(dict(row), default=_to_builtin, allow_nan=True)
    self._file.write(line + '\n')
    self._file.flush()

  def close(self) -> None:
    """Closes the file; further writes raise."""
    self._file.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Reads every row of a JSON-lines metric file, in order.

  A last line that is cut short (no newline and not valid JSON, as a crash leaves it)
  is skipped; a bad line anywhere else raises `ValueError` naming the file and line.
  """
  with open(path, encoding='utf-8') as f:
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
