"""The training driver end to end on configs/cifar10_resnet18.py:tiny, on TFDS mock data."""

import json
import math
import os

import pytest

from configs import cifar10_resnet18
from invmeasure.training import loop
from invmeasure.training.errors import ConfigError
from tests import tfds_mock


@pytest.fixture
def mock_cifar10(monkeypatch):
  with tfds_mock.mock_tfds(monkeypatch, num_examples=64):
    yield


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_tiny_config_trains_measures_and_checkpoints(mock_cifar10, tmp_path):
  config = cifar10_resnet18.get_config("tiny")
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)

  rows = read_rows(workdir)
  assert [r["step"] for r in rows] == [0, 1, 2, 3]
  first = rows[0]
  assert first["epoch"] == 0.0 and "train_loss" not in first
  for row in rows:
    if row["step"] % config.diagnostics.every_steps == 0 or row["step"] == 3:
      for name in ("full_loss", "grad_norm", "objective_grad_norm", "noise_norm", "sharpness"):
        assert math.isfinite(row[name]), (row["step"], name)
  for row in rows[1:]:
    assert math.isfinite(row["train_loss"]) and row["lr"] == pytest.approx(0.1)
  assert rows[-1]["epoch"] == pytest.approx(3 / (64 // config.batch_size))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["model"]["name"] == "resnet" and saved["dataset"] == "cifar10"


def test_missing_cifar10_is_a_one_line_config_error_and_writes_nothing(tmp_path):
  config = cifar10_resnet18.get_config("tiny")
  config.data_dir = str(tmp_path / "tfds")
  os.makedirs(config.data_dir)
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as error:
    loop.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert "\n" not in message
  assert "config.dataset='cifar10'" in message and "tfds build cifar10" in message
  assert not workdir.exists()
  assert os.listdir(config.data_dir) == []


def test_full_config_is_the_papers_figure_6_setting():
  config = cifar10_resnet18.get_config()
  assert (config.model.name, config.model.depth, config.model.stem) == ("resnet", 18, "cifar")
  assert (config.batch_size, config.num_epochs, config.augmentation) == (128, 200, "crop_flip")
  assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.momentum,
          config.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
  assert not config.optimizer.decoupled_weight_decay
  assert (config.schedule.name, tuple(config.schedule.boundaries_epochs),
          config.schedule.decay_factor) == ("step", (100.0, 150.0), 0.1)
  with pytest.raises(ValueError, match="'huge'"):
    cifar10_resnet18.get_config("huge")
