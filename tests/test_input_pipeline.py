"""ImageNet's input pipeline: crops from JPEG bytes, worker processes, exact resume.

On a tiny TFDS ArrayRecord imagenet2012 that the tests write (`data.jpeg_records`, no
TensorFlow): every batch is a pure function of (seed, step), whatever the number of worker
processes, the number of processes sharing the batch, or the step a stream starts at.
"""

import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from invmeasure.data import image_reads, imagenet, jpeg, jpeg_records, loader, sources
from invmeasure.training import image_task
from invmeasure.training.errors import ConfigError
from tests import dying_worker

BATCH = 4
STEPS = 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """14 small JPEGs of three shapes, one of them grayscale."""
  path = str(tmp_path_factory.mktemp("jpegs"))
  jpeg_records.write(path, 14, seed=3, sizes=(((64, 48), 1.0), ((48, 64), 1.0), ((40, 40), 1.0)),
                     grayscale_every=7)
  return path


def _train_read(data_dir, process_index=0, process_count=1):
  source = sources.load_source("imagenet2012", "train", data_dir)
  reader = image_reads.Reader(source, process_index, process_count)
  return image_reads.TrainRead(reader, seed=7, batch_size=BATCH, num_examples=len(source))


def test_batches_do_not_depend_on_workers_processes_or_where_a_stream_starts(data_dir):
  reference = [_train_read(data_dir)(step) for step in range(STEPS)]
  assert reference[0]["image"].shape == (BATCH, 224, 224, 3)
  assert reference[0]["image"].dtype == np.uint8 and reference[0]["label"].dtype == np.int32
  assert not np.array_equal(reference[0]["image"], reference[1]["image"])
  # Two processes: each reads its half, with the crops the whole batch's places get.
  halves = [[_train_read(data_dir, p, 2)(step) for p in range(2)] for step in range(STEPS)]
  for whole, (first, second) in zip(reference, halves):
    for name in whole:
      assert np.array_equal(whole[name], np.concatenate([first[name], second[name]]))
  # One worker from step 0; two workers resuming at step 2 after a jump.
  for workers, start in ((1, 0), (2, 2)):
    stream = loader.Batches(_train_read(data_dir), STEPS, workers)
    try:
      for step in range(start, STEPS):
        batch = stream.get(step)
        for name in batch:
          assert np.array_equal(batch[name], reference[step][name]), (workers, start, step)
    finally:
      stream.close()


def test_diagnostic_minibatches_are_the_same_with_workers(data_dir):
  source = sources.load_source("imagenet2012", "train", data_dir)
  indices = np.arange(12).reshape(3, 4)
  for augment in (True, False):
    read = image_reads.DiagnosticRead(image_reads.Reader(source), 7, 10, indices, augment)
    in_thread = loader.read_all(read, 3, num_workers=0)
    assert not np.array_equal(in_thread[0]["image"], in_thread[1]["image"])
    if augment:
      with_workers = loader.read_all(read, 3, num_workers=2)
      for a, b in zip(in_thread, with_workers):
        assert all(np.array_equal(a[k], b[k]) for k in a)
  # Center crops (augment False) are the evaluation crops: fixed per example.
  again = sources.load_source("imagenet2012", "train", data_dir).read(indices[1], None)
  assert np.array_equal(again["image"], in_thread[1]["image"])


def _coordinate_jpeg(width=500, height=375) -> tuple[bytes, np.ndarray]:
  """An image whose red channel is its column and green its row (scaled to 0..255)."""
  x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
  y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
  pixels = np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
  data = buffer.getvalue()
  return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _describe(crop: np.ndarray) -> tuple[float, ...]:
  """(column center, column extent, row center, row extent, flipped) of a crop of the
  coordinate image, read from its pixels."""
  red, green = crop[..., 0].astype(float), crop[..., 1].astype(float)
  return (red.mean(), abs(red[:, -2].mean() - red[:, 1].mean()), green.mean(),
          green[-2].mean() - green[1].mean(), float(red[:, -2].mean() < red[:, 1].mean()))


def test_crops_are_drawn_as_the_old_path_draws_them():
  """Random-resized crops from the JPEG bytes (DCT-scaled decode where the crop shrinks 2x
  or more, as most do at this output size) against the old path's crops of the decoded
  image: the windows' places, sizes and flips have the same distributions."""
  data, decoded = _coordinate_jpeg()
  n, size = 400, 32
  new = np.array([_describe(jpeg.random_crop(data, np.random.default_rng([1, i]), size))
                  for i in range(n)])
  old = np.array([_describe(imagenet.random_resized_crop(decoded, np.random.default_rng([2, i]),
                                                         size)) for i in range(n)])
  for column in range(4):
    assert stats.ks_2samp(new[:, column], old[:, column]).pvalue > 0.01, column
  assert abs(new[:, 4].mean() - old[:, 4].mean()) < 0.1 and abs(new[:, 4].mean() - 0.5) < 0.08
  # The same seed gives the same window: the crops agree pixel for pixel up to the decode.
  same_new = jpeg.random_crop(data, np.random.default_rng([5]), 224).astype(float)
  same_old = imagenet.random_resized_crop(decoded, np.random.default_rng([5])).astype(float)
  assert np.abs(same_new - same_old).mean() < 2.0


def test_windows_follow_the_inception_distribution():
  rng = np.random.default_rng(0)
  windows = [jpeg.random_window(375, 500, rng) for _ in range(4000)]
  scale = np.array([w.height * w.width / (375 * 500) for w in windows])
  ratio = np.array([w.width / w.height for w in windows])
  assert scale.min() > 0.075 and scale.max() <= 1.0
  assert ratio.min() > 0.74 and ratio.max() < 1.35
  assert stats.kstest(scale[scale < 0.5], stats.uniform(0.08, 0.42).cdf).pvalue > 0.01
  assert all(0 <= w.top and w.top + w.height <= 375 and w.left + w.width <= 500 for w in windows)


def test_center_crop_from_bytes_matches_the_decoded_center_crop():
  for width, height in ((500, 375), (1200, 900)):  # the second decodes at half size
    data, decoded = _coordinate_jpeg(width, height)
    new = jpeg.center_crop(data).astype(float)
    old = imagenet.center_crop(decoded).astype(float)
    assert new.shape == old.shape == (224, 224, 3)
    assert np.abs(new - old).mean() < 2.0, (width, height)


def test_grayscale_jpegs_and_decoded_arrays_give_rgb_crops():
  buffer = io.BytesIO()
  Image.fromarray(np.full((50, 70), 90, np.uint8)).save(buffer, "JPEG")
  crop = jpeg.random_crop(buffer.getvalue(), np.random.default_rng(0), 32)
  assert crop.shape == (32, 32, 3) and abs(int(crop[5, 5, 1]) - 90) <= 2
  assert jpeg.center_crop(np.zeros((30, 40, 1), np.uint8), 16).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_decode_matches_pillows_at_every_dct_scale(mode, seed):
  """The decode (RGB, at 1/1 to 1/8 size) against Pillow's `draft` + RGB conversion of the
  same bytes: the same sizes, and the same pixels up to the fast integer IDCT's rounding
  (Pillow's is the accurate one; measured on 30 seeds: at most 3 levels, 1 on average)."""
  rng = np.random.default_rng(seed)
  smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((32, 32, 1))).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(smooth[:375, :500]).convert(mode).save(buffer, "JPEG", quality=90)
  data = buffer.getvalue()
  for reduce in (1, 2, 4, 8):
    reference = Image.open(io.BytesIO(data))
    if reduce > 1:
      reference.draft(reference.mode, (500 // reduce, 375 // reduce))
    expected = np.asarray(reference.convert("RGB")).astype(float)
    decoded = jpeg.decode(data, reduce).astype(float)
    assert decoded.shape == expected.shape, reduce
    difference = np.abs(decoded - expected)
    assert difference.max() <= 4 and difference.mean() < 1.5, (reduce, difference.max())


def test_what_libjpeg_turbo_refuses_is_decoded_by_opencv():
  """A PNG (ImageNet has one) has no JPEG header: read by the fallback, pixel for pixel."""
  pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  assert jpeg.dimensions(buffer.getvalue()) == (30, 40)
  np.testing.assert_array_equal(jpeg.decode(buffer.getvalue()), pixels)


def test_a_mirrored_crop_is_the_crop_mirrored(seed):
  """The flip is folded into the warp: the same pixels as mirroring the crop after it."""
  data, _ = _coordinate_jpeg()
  for i in range(20):
    window = jpeg.random_window(375, 500, np.random.default_rng([seed, i]))
    plain = jpeg.crop(data, lambda h, w: (window, False), 64)
    mirrored = jpeg.crop(data, lambda h, w: (window, True), 64)
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])


def test_undecodable_bytes_are_a_one_line_error():
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buffer, "JPEG")
  data = buffer.getvalue()
  truncated = data[:data.index(b"\xff\xda") + 14]  # up to the scan's header: no pixels
  with pytest.raises(ValueError, match=rf"^cannot decode this image \({len(truncated)} bytes, "
                     r"50x40 by its header\)"):
    jpeg.random_crop(truncated, np.random.default_rng(0), 16)


def test_a_worker_that_dies_is_a_one_line_error():
  stream = loader.Batches(dying_worker.DiesAtTwo(), 10, num_workers=1)
  try:
    with pytest.raises(loader.DataWorkerError, match="data worker process died"):
      for index in range(10):
        stream.get(index)
  finally:
    stream.close()


def test_data_workers_default_to_the_cores_this_process_may_use():
  config = ml_collections.ConfigDict({"data_workers": -1})
  assert image_task._data_workers(config) == len(os.sched_getaffinity(0))
  with pytest.raises(ConfigError, match="config.data_workers"):
    image_task._data_workers(ml_collections.ConfigDict({"data_workers": -2}))


def test_a_workers_batch_lives_in_shared_memory_and_an_abandoned_one_is_freed(monkeypatch):
  """In a worker `batch_array` is grain's shared memory (passed on by name, not copied);
  `release` unlinks it when a read fails halfway; in the calling thread a plain array."""
  assert type(loader.batch_array((2, 3), np.uint8)) is np.ndarray
  monkeypatch.setattr(loader, "_IN_WORKER", True)
  array = loader.batch_array((2, 3), np.uint8)
  name = array.shm.name
  assert os.path.exists(f"/dev/shm/{name.lstrip('/')}")
  loader.release(array)
  assert not os.path.exists(f"/dev/shm/{name.lstrip('/')}")
