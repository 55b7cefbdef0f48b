"""One config over several seeds (`--seeds`): sibling run directories, one per seed, each
its own run, and a figure of their mean with a band."""

import json
import os

import pytest

from configs import quickstart
from invmeasure.analysis import figures
from invmeasure.training import replicates
from invmeasure.training.errors import ConfigError
from tests import driver


def test_each_seed_is_its_own_run_and_a_rerun_repeats_nothing(tmp_path):
  config = quickstart.get_config("tiny")
  config.num_train_steps = 4
  workdir = str(tmp_path / "runs")
  replicates.train_seeds(config, workdir, [3, 5])
  figures.draw_seeds(workdir, [3, 5])  # what experiments.run draws after them
  assert sorted(os.listdir(workdir)) == ["figures", "seed_3", "seed_5"]
  tables = {}
  for seed in (3, 5):
    run_dir = os.path.join(workdir, f"seed_{seed}")
    assert json.load(open(os.path.join(run_dir, "config.json")))["seed"] == seed
    tables[seed] = driver.rows(run_dir)
    assert tables[seed][-1]["step"] == 4
  assert tables[3][0]["full_loss"] != tables[5][0]["full_loss"], "other weights per seed"
  assert os.path.getsize(os.path.join(workdir, "figures", "training_dynamics.png")) > 0
  assert config.seed == 0, "the caller's config is left alone"
  replicates.train_seeds(config, workdir, [3, 5])
  assert driver.rows(os.path.join(workdir, "seed_3")) == tables[3]


@pytest.mark.parametrize("values,expected", [
    (["0", "x"], "--seeds=0,x must be comma-separated integers"),
    (["1", "1"], "must name at least one seed, each once"),
])
def test_bad_seeds_are_one_line_errors(values, expected):
  with pytest.raises(ConfigError, match=expected):
    replicates.parse_seeds(values)
  assert replicates.parse_seeds(["2", "0"]) == [2, 0]


def test_seeds_flag_from_the_command_line(tmp_path):
  result = driver.run(str(tmp_path / "bad"), "--seeds=a,b", check=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: --seeds=a,b")
  result = driver.run(str(tmp_path / "syn"), "--seeds=0,1", config="configs/synthetic_1d.py",
                      check=False)
  assert result.returncode == 1 and "--seeds applies to training configs" in result.stderr
  assert not os.path.exists(tmp_path / "bad") and not os.path.exists(tmp_path / "syn")
