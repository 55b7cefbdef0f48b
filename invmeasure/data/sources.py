"""Random-access data sources: `len(source)` examples, `source[indices] -> dict of arrays`.

Random access makes the batch of every step a pure function of (seed, step), so a resumed
run reads exactly the batches an uninterrupted one would, with no iterator state to save.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol

import numpy as np

from invmeasure.training.errors import ConfigError


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """An in-memory data set: equal-length arrays keyed by feature name."""
  arrays: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {name: array[indices] for name, array in self.arrays.items()}


class TfdsSource:
  """A TFDS split read through `tfds.data_source` (ArrayRecord; no TensorFlow needed)."""

  def __init__(self, name: str, split: str, data_dir: str | None, features: tuple[str, ...]):
    import tensorflow_datasets as tfds
    self._features = features
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # TFDS raises several types for a missing data set
      where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise ConfigError(
          f"config.dataset={name!r} split {split!r} is not prepared in {where} ({type(error).__name__}); "
          f"prepare it with `tfds build {name} --file_format=array_record"
          f"{' --manual_dir=DIR' if name == 'imagenet2012' else ''}` "
          "or set config.data_dir / TFDS_DATA_DIR to where it is") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Examples at `indices` (any shape), stacked as indices.shape + feature shape."""
    indices = np.asarray(indices)
    examples = self._source.__getitems__([int(i) for i in indices.reshape(-1)])
    return {f: np.stack([np.asarray(ex[f]) for ex in examples]).reshape(
        indices.shape + np.shape(examples[0][f])) for f in self._features}


def digits(split: str) -> ArraySource:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), ships with the install.

  A fixed permutation puts 1,500 images in 'train' and 297 in 'test'. Pixels are 0..16.
  """
  from sklearn import datasets
  data = datasets.load_digits()
  order = np.random.default_rng(0).permutation(len(data.target))
  images = (data.images[order] * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
  labels = data.target[order].astype(np.int32)
  part = slice(0, 1500) if split == "train" else slice(1500, None)
  if split not in ("train", "test"):
    raise ConfigError(f"digits has splits 'train' and 'test', not {split!r}")
  return ArraySource({"image": images[part], "label": labels[part]})


DATASETS = ("digits", "cifar10", "imagenet2012")


def load_source(name: str, split: str, data_dir: str | None = None) -> Source:
  """The named data set's split, or a ConfigError naming `config.dataset`."""
  if name == "digits":
    return digits(split)
  if name in ("cifar10", "imagenet2012"):
    return TfdsSource(name, split, data_dir, features=("image", "label"))
  raise ConfigError(f"config.dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
