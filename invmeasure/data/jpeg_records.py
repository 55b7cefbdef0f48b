"""A TFDS ArrayRecord data set of synthetic photograph-like JPEGs, written without TensorFlow.

For benchmarks and tests of the ImageNet input pipeline: the files are what `tfds build
imagenet2012 --file_format=array_record` writes (one `tf.train.Example` per record with
`image` JPEG bytes, `label`, `file_name`; `dataset_info.json` beside them), so
`tfds.data_source("imagenet2012", data_dir=...)` and `sources.load_source` read them as they
read the real data set. The images compress like photographs: smooth colour fields at three
scales plus fine texture, whose strength sets the file size.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

# (width, height) of ImageNet's most common shapes, with weights: landscape 500x375 most of all.
IMAGENET_LIKE_SIZES = (((500, 375), 0.45), ((375, 500), 0.15), ((500, 333), 0.15),
                       ((333, 500), 0.05), ((500, 400), 0.1), ((640, 480), 0.1))


@dataclasses.dataclass(frozen=True)
class Written:
  """What `write` wrote: where, how many, and the JPEG sizes."""
  data_dir: str
  num_examples: int
  mean_kb: float
  min_kb: float
  max_kb: float
  mean_pixels: float


def photo_like(rng: np.random.Generator, width: int, height: int, texture: float,
               quality: int = 90, grayscale: bool = False) -> bytes:
  """JPEG bytes of a photograph-like image; `texture` (pixel noise std, 0..255 units)
  sets the size: at 500x375 and quality 90, 5 gives about 70 KB, 14 about 150 KB."""
  image = np.zeros((height, width, 3), np.float32)
  for cells, amplitude in ((3, 70.0), (12, 35.0), (48, 20.0)):
    grid = rng.normal(0.0, 1.0, (max(2, cells * height // width), cells, 3)).astype(np.float32)
    image += amplitude * np.stack(
        [np.asarray(Image.fromarray(grid[..., c]).resize((width, height), Image.BICUBIC))
         for c in range(3)], axis=-1)
  image += rng.normal(0.0, texture, (height, width, 1)).astype(np.float32)
  pixels = np.clip(image + 128.0, 0, 255).astype(np.uint8)
  picture = Image.fromarray(pixels[..., 0] if grayscale else pixels)
  buffer = io.BytesIO()
  picture.save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def write(data_dir: str, num_examples: int, *, seed: int = 0, name: str = "imagenet2012",
          split: str = "train", sizes=IMAGENET_LIKE_SIZES, texture: tuple[float, float] = (5.0, 14.0),
          quality: int = 90, num_classes: int = 1000, grayscale_every: int = 0) -> Written:
  """Writes `num_examples` photograph-like JPEGs as the TFDS data set `name`'s `split` in
  `data_dir` (one ArrayRecord shard; splits written before stay). Shapes are drawn from `sizes` ((width, height),
  weight) pairs, texture uniformly from `texture`; every `grayscale_every`-th image (if
  nonzero) is a one-channel JPEG, as some of ImageNet's are."""
  import tensorflow_datasets as tfds
  from array_record.python import array_record_module
  from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  os.makedirs(builder.data_dir, exist_ok=True)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=name, split=split, filetype_suffix="array_record")
  path = os.path.join(builder.data_dir, f"{name}-{split}.array_record-00000-of-00001")
  rng = np.random.default_rng(seed)
  shapes, weights = zip(*sizes)
  kbs, pixels = [], []
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  try:
    for i in range(num_examples):
      width, height = shapes[rng.choice(len(shapes), p=np.asarray(weights) / sum(weights))]
      gray = bool(grayscale_every) and i % grayscale_every == grayscale_every - 1
      data = photo_like(rng, width, height, rng.uniform(*texture), quality, gray)
      kbs.append(len(data) / 1024)
      pixels.append(width * height)
      bytes_feature = lambda v: tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[v]))  # noqa: E731
      example = tf_example_pb2.Example(features=tf_feature_pb2.Features(feature={
          "image": bytes_feature(data),
          "label": tf_feature_pb2.Feature(
              int64_list=tf_feature_pb2.Int64List(value=[int(rng.integers(num_classes))])),
          "file_name": bytes_feature(f"synthetic_{i:08d}.JPEG".encode())}))
      writer.write(example.SerializeToString())
  finally:
    writer.close()
  others = []  # splits written before into the same directory stay listed
  if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
    builder.info.read_from_directory(builder.data_dir)
    others = [info for name, info in builder.info.splits.items() if name != split]
  builder.info.set_splits(tfds.core.SplitDict(others + [tfds.core.SplitInfo(
      name=split, shard_lengths=[num_examples], num_bytes=os.path.getsize(path),
      filename_template=template)]))
  builder.info.write_to_directory(builder.data_dir)
  return Written(data_dir, num_examples, float(np.mean(kbs)), float(np.min(kbs)),
                 float(np.max(kbs)), float(np.mean(pixels)))
