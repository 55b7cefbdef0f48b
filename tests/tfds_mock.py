"""Offline TFDS data for tests: `tfds.testing.mock_data` with its batch read repaired."""

import contextlib

import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking


def _mock_getitems(*args, generator, serialized=False):
  """Batch read of the mocked ArrayRecord source: the examples at the given keys.

  tfds 4.9.10 stores its replacement `__getitems__` on a MagicMock instance, where it is
  not bound, so the keys arrive as the first argument (a bound call passes self first).
  """
  del serialized  # `tfds.data_source` reads decoded examples
  return [generator[int(key)] for key in args[-1]]


@contextlib.contextmanager
def mock_tfds(monkeypatch, num_examples: int):
  """Random examples for every TFDS data set, shaped by its features; no files needed."""
  monkeypatch.setattr(mocking, "_getitems", _mock_getitems)
  with tfds.testing.mock_data(num_examples=num_examples):
    yield
