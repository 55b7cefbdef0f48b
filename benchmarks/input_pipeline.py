"""Whether the input pipeline holds the train step back, and how fast ImageNet's is.

The driver's loop as it runs (`loop._Batches`: the task reads the next step's batch on a
thread while the device computes, then `make_array_from_process_local_data` places it)
against the same steps on batches already on the device, and the loader alone. For
configs/quickstart.py (digits, in memory) and configs/cifar10_resnet18.py on TFDS's mock
CIFAR-10 (`tfds.testing.mock_data`: random examples of the real shapes; the read goes
through the same `tfds.data_source` path as the prepared ArrayRecord files).

ImageNet: images/s of each step's cropped batch (uint8 [B, 224, 224, 3] and labels, this
process's rows, as `task.train_batch` returns them) from a TFDS ArrayRecord imagenet2012 data
set of photograph-like JPEGs that the script writes first (`data.jpeg_records`: ImageNet's
common shapes around 500x375, quality 90, 70-150 KB), on 1 and on 2 cores (the process and
any worker it starts pinned to them), for
- old: the path before issue 22 (`sources.TfdsSource`: TFDS decodes every JPEG in full in
  the calling thread, then `imagenet.preprocess` crops in an 8-thread pool);
- new: `sources.JpegSource` read by `config.data_workers` = cores worker processes
  (`loader.Batches`): the crop drawn from the header, decoded at reduced size where it will
  be shrunk 2x or more, resized once;
- tf.data: the flax ImageNet example's recipe (`sample_distorted_bounding_box`,
  `decode_and_crop_jpeg`, bicubic resize, flip; cast to uint8 as ours, normalisation left to
  the device as ours) on the same JPEG bytes, read into memory first, its thread pool
  the given cores. Needs TensorFlow (`pip install -e ".[bench]"`); otherwise "n/a".
Each repetition runs every (path, cores) in turn, so load from other jobs falls on all;
medians of the repetitions.

    python -m benchmarks.input_pipeline
    python -m benchmarks.input_pipeline --quick   # tiny configs and data, no TensorFlow, CI
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from invmeasure.data import (batching, image_reads, jpeg, jpeg_records, loader,  # noqa: E402
                             sources)
from invmeasure.training import loop  # noqa: E402

HEADER = ("config", "batch", "device-resident ms/step", "real loader ms/step",
          "loader / resident", "loader alone ms/batch", "notes")


@dataclasses.dataclass(frozen=True)
class Case:
  config: str
  arg: str
  steps: int      # steps per timed repetition
  repeats: int
  mock: bool      # TFDS mock data


def cases(quick: bool) -> list[Case]:
  if quick:
    return [Case("quickstart", "tiny", 4, 1, False), Case("cifar10_resnet18", "tiny", 2, 1, True)]
  return [Case("quickstart", "", 200, 7, False), Case("cifar10_resnet18", "", 3, 3, True)]


def _mock_getitems(*args, generator, serialized=False):
  """tfds 4.9.10's mocked batch read, repaired as tests/tfds_mock.py does: the keys
  arrive as the last positional argument."""
  del serialized
  return [generator[int(key)] for key in args[-1]]


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking
  original = mocking._getitems
  mocking._getitems = _mock_getitems
  try:
    with tfds.testing.mock_data(num_examples=num_examples):
      yield
  finally:
    mocking._getitems = original


def measure(case: Case) -> tuple:
  config = importlib.import_module(f"configs.{case.config}").get_config(case.arg)
  plan = loop.make_plan(config)
  task = plan.task
  state = loop.init_state_fn(plan)(loop.init_key(config))
  step = loop.jit_train_step(plan)
  batches = loop._Batches(task, plan.batch_sharding)
  resident = [batches.train(t) for t in range(case.steps)]
  state, _ = step(state, resident[0])  # compile
  position = {"t": case.steps}

  def on_device():
    nonlocal state
    for batch in resident:
      state, metrics = step(state, batch)
    return metrics

  def with_loader():
    nonlocal state
    for _ in range(case.steps):
      state, metrics = step(state, batches.train(position["t"]))
      position["t"] += 1
    return metrics

  def loader_alone():
    for _ in range(case.steps):
      out = batches._to_global(task.train_batch(position["t"]))
      position["t"] += 1
    return out

  fns = {"resident": on_device, "loader": with_loader, "alone": loader_alone}
  times = common.interleaved_ms(fns, case.repeats, per_call={k: case.steps for k in fns})
  batches.close()
  source = "TFDS mock data" if case.mock else "in memory"
  aug = config.get("augmentation", "none")
  return (f"{case.config}{':' + case.arg if case.arg else ''}", config.batch_size,
          common.ms(times["resident"]), common.ms(times["loader"]),
          common.ratio(times["loader"], times["resident"]), common.ms(times["alone"]),
          f"{source}; augmentation {aug} (on the device)")


# ---------------------------------------------------------------------------------------
# ImageNet: old path, new path and tf.data on the same files.

IMAGENET_HEADER = ("path", "cores", "images/s", "images/s per core", "vs old, same cores",
                   "notes")
PROJECTION_HEADER = ("path", "images/s per core (1 core)", "2 cores / 1 core",
                     "projected 96-core host images/s", "ResNet-101 needs (published)")
HOST_CORES = 96
# Published throughputs (not measured here: benchmarks/accelerator.py has not run on an
# accelerator yet), as issue 22 quotes them: the flax ImageNet example trains ResNet-50 at
# ~8,000 images/s from one TPU v3-8 host; 8 A100s train ResNet-50 at ~16,000 images/s; a
# ResNet-101 step costs about twice a ResNet-50 step.
RESNET101_NEEDS = "~4,000/s per TPU v3-8 host; ~8,000/s per 8-A100 node (~1,000/s per GPU)"


@dataclasses.dataclass(frozen=True)
class ImagenetCase:
  num_examples: int  # records written
  batch_size: int
  batches: int       # timed per measurement (after one untimed batch)
  repeats: int
  tf: bool           # measure tf.data too
  cores: tuple[int, ...] = (1, 2)


def imagenet_case(quick: bool) -> ImagenetCase:
  if quick:
    # One core: one worker process to start (each imports this script's modules).
    return ImagenetCase(num_examples=24, batch_size=8, batches=2, repeats=1, tf=False,
                        cores=(1,))
  return ImagenetCase(num_examples=1024, batch_size=128, batches=8, repeats=3, tf=True)


def _set_affinity(cores) -> None:
  """Every thread of this process on `cores` (a thread keeps the mask it had when made, so
  thread pools made earlier, the old path's and TensorFlow's, are moved too)."""
  for thread in os.listdir("/proc/self/task"):
    try:
      os.sched_setaffinity(int(thread), cores)
    except (ProcessLookupError, PermissionError):  # a thread that just ended
      pass


@contextlib.contextmanager
def pinned(cores: int):
  """This process's threads, and every process or thread they start meanwhile, on the
  first `cores` cores."""
  before = os.sched_getaffinity(0)
  _set_affinity(sorted(before)[:cores])
  try:
    yield
  finally:
    _set_affinity(before)


def _rate(next_batch: Callable[[], int], batches: int, warmup: int = 1) -> float:
  """Images/s over `batches` calls after `warmup` untimed ones: start-up (workers,
  tracing) and the batches that prefetching made meanwhile, so that the timed calls wait
  for batches being made."""
  for _ in range(warmup):
    next_batch()
  start = time.perf_counter()
  images = sum(next_batch() for _ in range(batches))
  return images / (time.perf_counter() - start)


def old_path_rate(data_dir: str, case: ImagenetCase, first_step: int) -> float:
  """What the task read per step before: TfdsSource with its full decode, seed (seed, step, 0)."""
  source = sources.TfdsSource("imagenet2012", "train", data_dir, ("image", "label"))
  steps = iter(range(first_step, first_step + case.batches + 1))

  def next_batch():  # one call at a time: nothing made ahead
    step = next(steps)
    indices = batching.train_indices(0, step, case.batch_size, len(source))
    return len(source.read(indices, (0, step, 0))["image"])
  return _rate(next_batch, case.batches)


def new_path_rate(data_dir: str, case: ImagenetCase, first_step: int, workers: int) -> float:
  """The task's training stream: `workers` processes (0: the calling thread), batches in
  step order."""
  source = sources.JpegSource("imagenet2012", "train", data_dir)
  read = image_reads.TrainRead(image_reads.Reader(source), 0, case.batch_size, len(source))
  warmup = 1 + workers * loader.BUFFER
  stop = first_step + warmup + case.batches
  stream = loader.Batches(read, stop, workers)
  steps = iter(range(first_step, stop))
  try:
    return _rate(lambda: len(stream.get(next(steps))["image"]), case.batches, warmup)
  finally:
    stream.close()


def _flax_recipe(tf):
  """The flax ImageNet example's training preprocessing, uint8 out (ours normalises on
  the device)."""
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])

  def center(image_bytes, size=224, padding=32):
    shape = tf.image.extract_jpeg_shape(image_bytes)
    side = tf.cast(size / (size + padding) * tf.cast(tf.minimum(shape[0], shape[1]),
                                                     tf.float32), tf.int32)
    window = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])
    return resize(tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3))

  def resize(image, size=224):
    return tf.image.resize([image], [size, size], method=tf.image.ResizeMethod.BICUBIC)[0]

  def train(image_bytes):
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=bbox, min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    image = tf.image.decode_and_crop_jpeg(
        image_bytes, tf.stack([offset_y, offset_x, height, width]), channels=3)
    bad = tf.reduce_sum(tf.cast(tf.equal(shape, tf.shape(image)), tf.int32)) >= 3
    image = tf.cond(bad, lambda: center(image_bytes), lambda: resize(image))
    image = tf.image.random_flip_left_right(tf.reshape(image, [224, 224, 3]))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return train


def _same_decode_as_tensorflow(tf, jpegs: list[bytes]) -> str:
  """Checks `jpeg.decode` against `tf.io.decode_jpeg` (its default, the fast integer IDCT)
  on every file; a line saying how many were bit-identical, or an error."""
  for i, data in enumerate(jpegs):
    expected = tf.io.decode_jpeg(data, channels=3).numpy()
    if not np.array_equal(jpeg.decode(data), expected):
      raise AssertionError(f"jpeg.decode differs from tf.io.decode_jpeg on file {i}")
  return f"decode: bit-identical to tf.io.decode_jpeg(channels=3) on all {len(jpegs)} files"


def tf_data_rate(jpegs: list[bytes], labels: np.ndarray, case: ImagenetCase,
                 cores: int) -> float:
  import tensorflow as tf
  recipe = _flax_recipe(tf)
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  options.threading.max_intra_op_parallelism = 1
  dataset = (tf.data.Dataset.from_tensor_slices((jpegs, labels)).repeat()
             .map(lambda b, y: {"image": recipe(b), "label": y}, num_parallel_calls=cores)
             .batch(case.batch_size, drop_remainder=True).prefetch(2).with_options(options))
  iterator = iter(dataset.as_numpy_iterator())
  return _rate(lambda: len(next(iterator)["image"]), case.batches, warmup=4)


def _tensorflow_available() -> bool:
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    return False
  return True


def measure_imagenet(case: ImagenetCase) -> tuple[list, list, str, str]:
  """(table rows, projection rows, data set line, last line)."""
  cores_list = [c for c in case.cores if c <= len(os.sched_getaffinity(0))]
  with tempfile.TemporaryDirectory() as data_dir:
    written = jpeg_records.write(data_dir, case.num_examples, seed=0, grayscale_every=50)
    use_tf = case.tf and _tensorflow_available()
    decode_line = "decode: not compared with tf.io.decode_jpeg (TensorFlow not installed)"
    if use_tf:
      import tensorflow as tf
      tf.config.threading.set_inter_op_parallelism_threads(1)
      tf.config.threading.set_intra_op_parallelism_threads(1)
      raw = sources.JpegSource("imagenet2012", "train", data_dir)._source
      examples = [sources._image_and_label(r)
                  for r in raw.__getitems__(list(range(case.num_examples)))]
      jpegs, labels = [image for image, _ in examples], np.asarray([y for _, y in examples])
      decode_line = _same_decode_as_tensorflow(tf, jpegs)
    rates: dict[tuple[str, int], list[float]] = {}
    step = 0
    for _ in range(case.repeats):
      for cores in cores_list:
        with pinned(cores):
          fns = {"old": lambda: old_path_rate(data_dir, case, step),
                 "new": lambda: new_path_rate(data_dir, case, step, workers=cores)}
          if cores == 1:  # the same reads in this process: what the workers cost
            fns["new, no workers"] = lambda: new_path_rate(data_dir, case, step, workers=0)
          if use_tf:
            fns["tf.data"] = lambda: tf_data_rate(jpegs, labels, case, cores)
          for path, fn in fns.items():
            rates.setdefault((path, cores), []).append(fn())
        step += case.batches + 1 + 2 * loader.BUFFER
  rate = {key: statistics.median(values) for key, values in rates.items()}
  get = lambda path, cores: rate.get((path, cores), float("nan"))  # noqa: E731
  notes = {"old": "TFDS full decode in the calling thread, crops in an 8-thread pool",
           "new": "config.data_workers = cores; crop from the header, fast-IDCT decode, "
                  "crops written into shared memory",
           "new, no workers": "the same reads in the calling thread (config.data_workers=0)",
           "tf.data": "flax recipe, decode_and_crop_jpeg, bicubic; bytes from memory"}
  rows = []
  for path in ("old", "new", "new, no workers", "tf.data"):
    for cores in cores_list:
      if (path, cores) not in rate and path == "new, no workers":
        continue
      value = get(path, cores)
      rows.append((path, cores, _count(value), _count(value / cores),
                   common.ratio(value, get("old", cores)),
                   notes[path] if value == value else "n/a: TensorFlow not installed"))
  projection = []
  for path in ("old", "new", "tf.data"):
    one, two = get(path, 1), get(path, 2)
    efficiency = two / (2 * one)
    projection.append((path, _count(one), common.ratio(two, one),
                       _count(one * HOST_CORES * efficiency), RESNET101_NEEDS))
  data_line = (f"data: {written.num_examples} synthetic JPEGs, mean {written.mean_kb:.0f} KB "
               f"({written.min_kb:.0f}-{written.max_kb:.0f}), mean "
               f"{written.mean_pixels / 1e3:.0f}k pixels; batch {case.batch_size}, "
               f"{case.batches} timed batches, median of {case.repeats}\n{decode_line}")
  last = (f"imagenet: new/old {common.ratio(get('new', 2), get('old', 2))}, "
          f"2 workers/1 worker {common.ratio(get('new', 2), get('new', 1))}, "
          f"new/tf.data {common.ratio(get('new', 2), get('tf.data', 2))} per core")
  return rows, projection, data_line, last


def _count(x: float) -> str:
  return "n/a" if x != x else f"{x:,.0f}"


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny configs, one repetition")
  parser.add_argument("--imagenet_only", action="store_true", help="only the ImageNet case")
  parser.add_argument("--skip_imagenet", action="store_true", help="only the loop cases")
  args = parser.parse_args(argv)
  print(common.machine_line())
  rows = []
  for case in ([] if args.imagenet_only else cases(args.quick)):
    with mock_tfds(num_examples=2048) if case.mock else contextlib.nullcontext():
      rows.append(measure(case))
  if rows:
    print()
    print(common.table(HEADER, rows, "lrrrrrl"))
  if not args.skip_imagenet:
    imagenet_rows, projection, data_line, last = measure_imagenet(imagenet_case(args.quick))
    print()
    print(data_line)
    print()
    print(common.table(IMAGENET_HEADER, imagenet_rows, "lrrrrl"))
    print()
    print(common.table(PROJECTION_HEADER, projection, "lrrrl"))
    print(common.end_line())
    print(last)
  else:
    print(common.end_line())


if __name__ == "__main__":
  main()
