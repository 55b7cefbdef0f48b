"""Random-access data sources: `len(source)` examples, `source[indices] -> dict of arrays`.

Random access makes the batch of every step a pure function of (seed, step), so a resumed
run reads exactly the batches an uninterrupted one would, with no iterator state to save.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol

import numpy as np

from invmeasure.data import imagenet, jpeg, loader
from invmeasure.errors import ConfigError


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...
  def read(self, indices: np.ndarray, augment_seed: tuple[int, ...] | None,
           positions: np.ndarray | None = None) -> dict:
    """Examples at `indices`, augmented on the host from `augment_seed` if it does so;
    `positions` (default 0, 1, ...) are their places in the global batch, which seed each
    example's augmentation whatever the number of processes that share the batch."""


# Training-set sizes, for planning a run (e.g. a dry run) without reading the data.
NUM_TRAIN_EXAMPLES = {"digits": 1500, "cifar10": 50000, "imagenet2012": 1281167}
# Shape of one example's image as the device sees it (after any host preprocessing).
IMAGE_SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "imagenet2012": (224, 224, 3)}


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """An in-memory data set: equal-length arrays keyed by feature name."""
  arrays: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {name: array[indices] for name, array in self.arrays.items()}

  def read(self, indices: np.ndarray, augment_seed: tuple[int, ...] | None,
           positions: np.ndarray | None = None) -> dict:
    """Host augmentation is none: in-memory images are augmented on the device."""
    return self[indices]


@dataclasses.dataclass(frozen=True)
class FirstExamples:
  """The first `size` examples of another source (an overfitting study's training set)."""
  source: Source
  size: int

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.source[indices]

  def read(self, indices: np.ndarray, augment_seed: tuple[int, ...] | None,
           positions: np.ndarray | None = None) -> dict:
    return self.source.read(indices, augment_seed, positions)


def _tfds_source(name: str, split: str, data_dir: str | None, **options):
  """`tfds.data_source` of a prepared split (with `options`, e.g. `deserialize_method`), or a
  ConfigError saying how to prepare it."""
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            **options)
  except Exception as error:  # TFDS raises several types for a missing data set
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    raise ConfigError(
        f"config.dataset={name!r} split {split!r} is not prepared in {where} ({type(error).__name__}); "
        f"prepare it with `tfds build {name} --file_format=array_record"
        f"{' --manual_dir=DIR' if name == 'imagenet2012' else ''}` "
        "or set config.data_dir / TFDS_DATA_DIR to where it is") from None


class TfdsSource:
  """A TFDS split read through `tfds.data_source` (ArrayRecord; no TensorFlow needed)."""

  def __init__(self, name: str, split: str, data_dir: str | None, features: tuple[str, ...]):
    self._name = name
    self._features = features
    self._source = _tfds_source(name, split, data_dir)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Examples at `indices` (any shape), stacked as indices.shape + feature shape."""
    return self.read(indices, None)

  def read(self, indices: np.ndarray, augment_seed: tuple[int, ...] | None,
           positions: np.ndarray | None = None) -> dict:
    """Examples at `indices` (any shape); ImageNet images are cropped to 224 here,
    at random when `augment_seed` is given (training), else centered, each from
    (augment_seed, its place in `indices`)."""
    indices = np.asarray(indices)
    examples = self._source.__getitems__([int(i) for i in indices.reshape(-1)])
    out = {}
    for f in self._features:
      values = [np.asarray(ex[f]) for ex in examples]
      if f == "image" and self._name == "imagenet2012":
        stacked = imagenet.preprocess(values, augment_seed)
      else:
        stacked = np.stack(values)
      out[f] = stacked.reshape(indices.shape + stacked.shape[1:])
    return out


class JpegSource:
  """An image split read as raw JPEG bytes (TFDS's own decode skipped) and cropped by
  `jpeg`, which decodes only what each crop needs: a random-resized crop and flip per
  example when `augment_seed` is given, each from (augment_seed, its position), else the
  center crop. Records are parsed here (a `tf.train.Example` of `image` bytes and `label`),
  a third of what TFDS's own parser takes. Pickles as its arguments, so worker processes
  reopen the files."""

  def __init__(self, name: str, split: str, data_dir: str | None, size: int = jpeg.IMAGE_SIZE):
    import tensorflow_datasets as tfds
    self._args = (name, split, data_dir, size)
    self._size = size
    self._source = _tfds_source(name, split, data_dir,
                                deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)

  def __getstate__(self):
    return self._args

  def __setstate__(self, args):
    self.__init__(*args)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.read(indices, None)

  def read(self, indices: np.ndarray, augment_seed: tuple[int, ...] | None,
           positions: np.ndarray | None = None) -> dict:
    indices = np.asarray(indices)
    flat = [int(i) for i in indices.reshape(-1)]
    positions = (np.arange(len(flat)) if positions is None
                 else np.asarray(positions).reshape(-1))
    examples = [_image_and_label(r) for r in self._source.__getitems__(flat)]
    images = loader.batch_array((len(flat), self._size, self._size, 3), np.uint8)
    try:
      for row, (image, _), place in zip(images, examples, positions):  # crops in place
        if augment_seed is None:
          jpeg.center_crop(image, self._size, out=row)
        else:
          rng = np.random.default_rng([*augment_seed, int(place)])
          jpeg.random_crop(image, rng, self._size, out=row)
    except BaseException:
      loader.release(images)
      raise
    labels = np.asarray([label for _, label in examples], np.int32)
    return {"image": images.reshape(indices.shape + images.shape[1:]),
            "label": labels.reshape(indices.shape)}


def _image_and_label(record: bytes | dict) -> tuple[bytes | np.ndarray, int]:
  """(image, label) of a serialized `tf.train.Example` (or of an already parsed example,
  as `tfds.testing.mock_data` returns them)."""
  if isinstance(record, dict):
    return record["image"], int(record["label"])
  from tensorflow_datasets.proto import tf_example_pb2
  features = tf_example_pb2.Example.FromString(record).features.feature
  return features["image"].bytes_list.value[0], features["label"].int64_list.value[0]


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
  if name == "imagenet2012":
    return JpegSource(name, split, data_dir)
  if name == "cifar10":
    return TfdsSource(name, split, data_dir, features=("image", "label"))
  raise ConfigError(f"config.dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
