"""ImageNet host preprocessing and the ResNet-101 config, on an imagenet2012 ArrayRecord data
set of small JPEGs that the tests write (`data.jpeg_records`: no TensorFlow needed)."""

import numpy as np
import pytest

from configs import imagenet_resnet101
from invmeasure.data import imagenet, jpeg_records, sources
from invmeasure.training import loop


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """32 training and 16 validation JPEGs of ImageNet-like aspect ratios, small."""
  path = str(tmp_path_factory.mktemp("imagenet"))
  sizes = (((100, 75), 1.0), ((75, 100), 0.5), ((64, 64), 0.5))
  jpeg_records.write(path, 32, seed=1, sizes=sizes, grayscale_every=8)
  jpeg_records.write(path, 16, seed=2, split="validation", sizes=sizes)
  return path


def test_random_resized_crop_and_center_crop_shapes_and_determinism():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(300, 451, 3), dtype=np.uint8)
  a = imagenet.random_resized_crop(image, np.random.default_rng([1, 2]))
  b = imagenet.random_resized_crop(image, np.random.default_rng([1, 2]))
  c = imagenet.random_resized_crop(image, np.random.default_rng([1, 3]))
  assert a.shape == (224, 224, 3) and a.dtype == np.uint8
  assert np.array_equal(a, b) and not np.array_equal(a, c)
  center = imagenet.center_crop(image)
  assert center.shape == (224, 224, 3)
  # The center crop of a resized image whose short side is 256: rows 16..240 of 256.
  constant_rows = np.repeat(np.arange(300, dtype=np.uint8)[:, None, None], 451, axis=1)
  crop = imagenet.center_crop(np.repeat(constant_rows, 3, axis=2))
  assert crop[0, 0, 0] < crop[-1, 0, 0]
  gray = imagenet.preprocess([rng.integers(0, 256, size=(250, 260), dtype=np.uint8)], None)
  assert gray.shape == (1, 224, 224, 3)


def test_imagenet_source_reads_fixed_size_batches(data_dir):
  source = sources.load_source("imagenet2012", "train", data_dir)
  assert len(source) == 32
  train = source.read(np.arange(6), (0, 5))
  again = source.read(np.arange(6), (0, 5))
  evaluation = source.read(np.arange(6).reshape(2, 3), None)
  assert train["image"].shape == (6, 224, 224, 3) and train["image"].dtype == np.uint8
  assert np.array_equal(train["image"], again["image"])
  assert evaluation["image"].shape == (2, 3, 224, 224, 3)
  assert evaluation["label"].shape == (2, 3)


def test_config_matches_the_paper_and_its_variants():
  config = imagenet_resnet101.get_config()
  assert (config.model.depth, config.batch_size, config.optimizer.learning_rate) == (101, 256, 0.1)
  assert config.optimizer.weight_decay == 1e-4 and config.optimizer.momentum == 0.9
  assert config.schedule.name == "step" and tuple(config.schedule.boundaries_epochs) == (30.0, 60.0)
  assert config.num_epochs == 90 and config.diagnostics.num_minibatches == 600
  constant = imagenet_resnet101.get_config("constant,lr=0.01,epochs=300")
  assert constant.schedule.name == "constant" and constant.optimizer.learning_rate == 0.01
  assert constant.num_epochs == 300
  assert imagenet_resnet101.sweep()[-1] == "constant,lr=0.01,epochs=300"
  with pytest.raises(ValueError, match="unknown argument"):
    imagenet_resnet101.get_config("fast")


def test_tiny_config_trains_on_written_imagenet(data_dir, tmp_path):
  config = imagenet_resnet101.get_config("tiny")
  config.data_dir = data_dir
  row = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert row["step"] == 3 and np.isfinite(row["grad_norm"]) and np.isfinite(row["train_loss"])
