"""Tests of reading run directories back and of the training figures drawn from them.

The run directories are written by hand (config.json and metrics.jsonl in the driver's
layout), so these tests need no training and no JAX.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from invmeasure.analysis import figures, runs
from invmeasure.training.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 10
NUM_STEPS = 40
BOUNDARY_EPOCH = 2.0  # the step schedule multiplies the rate by 0.1 here
DIAGNOSTIC_FIELDS = ("full_loss", "grad_norm", "objective_grad_norm", "noise_norm",
                     "grad_norm_sq_unbiased", "noise_norm_sq_unbiased", "sharpness",
                     "update_sharpness", "gradient_sharpness", "minibatch_grad_norm",
                     "weight_norm", "distance_from_init", "update_norm")


def _config(learning_rate: float, schedule: str = "step") -> dict:
  """A nested config as `ConfigDict.to_json_best_effort` writes it."""
  return {
      "experiment": "train",
      "seed": 0,
      "dataset": "digits",
      "model": {"name": "small_cnn", "widths": [8]},
      "batch_size": 32,
      "optimizer": {"name": "sgd", "learning_rate": learning_rate, "momentum": 0.9,
                    "weight_decay": 5e-4},
      "schedule": {"name": schedule, "boundaries_epochs": [BOUNDARY_EPOCH],
                   "decay_factor": 0.1},
      "diagnostics": {"every_steps": 5, "at_epoch_end": True},
      "log_every_steps": 2,
      "checkpoint_every_steps": 20,
  }


def _rows(learning_rate: float, *, epoch_ends: bool = True,
          diagnostics: bool = True) -> list[dict]:
  """Rows as the driver writes them: training every 2 steps, diagnostics every 5.

  A row's `lr` is the rate of the last step taken, so rows up to step 20 carry the
  base rate and rows from step 21 on the decayed one.
  """
  rng = np.random.default_rng(int(learning_rate * 1000))
  rows = []
  for done in range(NUM_STEPS + 1):
    lr = learning_rate if done <= BOUNDARY_EPOCH * STEPS_PER_EPOCH else 0.1 * learning_rate
    row: dict = {}
    if done and done % 2 == 0:
      row["train_loss"] = 2.0 / (1 + done) + 0.05 * rng.random()
    if done and done % STEPS_PER_EPOCH == 0 and epoch_ends:
      row["epoch_avg_train_loss"] = 2.5 / (1 + done)
    if diagnostics and done % 5 == 0:
      row.update({field: 0.5 + rng.random() for field in DIAGNOSTIC_FIELDS})
      row["distance_from_init"] = 0.1 * done
    if row:
      rows.append({"step": done, "epoch": done / STEPS_PER_EPOCH, "lr": lr, **row})
  return rows


def _write_run(path: pathlib.Path, config: dict, rows: list[dict]) -> str:
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config, indent=2))
  (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
  return str(path)


@pytest.fixture
def two_runs(tmp_path: pathlib.Path) -> list[str]:
  """Two runs differing only in optimizer.learning_rate (0.1 and 0.05)."""
  return [_write_run(tmp_path / f"lr{lr}", _config(lr), _rows(lr)) for lr in (0.1, 0.05)]


def _assert_png(path: str) -> None:
  with open(path, "rb") as f:
    header = f.read(8)
  assert header == PNG_HEADER, path
  assert os.path.getsize(path) > 1000, path


def test_load_run_reads_config_and_rows(two_runs):
  run = runs.load_run(two_runs[0])
  assert run.config["optimizer"]["learning_rate"] == 0.1
  assert run.rows == _rows(0.1)
  assert run.name == "lr0.1"


def test_load_run_names_the_workdir_when_metrics_are_missing(tmp_path):
  with pytest.raises(ConfigError) as missing_dir:
    runs.load_run(str(tmp_path / "nowhere"))
  assert str(tmp_path / "nowhere") in str(missing_dir.value)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError) as no_metrics:
    runs.load_run(str(tmp_path / "empty"))
  message = str(no_metrics.value)
  assert message == (f"--workdir={tmp_path / 'empty'} has no metrics.jsonl; "
                     "run experiments.run first")
  assert "\n" not in message


def test_series_skips_rows_without_the_field(two_runs):
  run = runs.load_run(two_runs[0])
  epochs, values = runs.series(run, "grad_norm")
  expected = [row for row in run.rows if "grad_norm" in row]
  assert len(expected) < len(run.rows)  # training-only rows lack it
  np.testing.assert_array_equal(epochs, [row["epoch"] for row in expected])
  np.testing.assert_array_equal(values, [row["grad_norm"] for row in expected])
  np.testing.assert_array_equal(epochs, np.arange(0, 41, 5) / STEPS_PER_EPOCH)

  train_epochs, _ = runs.series(run, "train_loss")
  np.testing.assert_array_equal(train_epochs, np.arange(2, 41, 2) / STEPS_PER_EPOCH)
  steps, _ = runs.series(run, "epoch_avg_train_loss", x="step")
  np.testing.assert_array_equal(steps, [10, 20, 30, 40])
  ends, _ = runs.series(run, "full_loss", require="epoch_avg_train_loss")
  np.testing.assert_array_equal(ends, [1.0, 2.0, 3.0, 4.0])

  absent_epochs, absent_values = runs.series(run, "not_a_metric")
  assert absent_epochs.size == absent_values.size == 0
  assert not runs.has_field(run, "not_a_metric")


def test_lr_change_epochs_are_exact(two_runs, tmp_path):
  for workdir in two_runs:
    assert runs.lr_change_epochs(runs.load_run(workdir)) == [BOUNDARY_EPOCH]
  constant = [dict(row, lr=0.1) for row in _rows(0.1)]
  run = runs.load_run(_write_run(tmp_path / "constant", _config(0.1), constant))
  assert runs.lr_change_epochs(run) == []
  # A smooth schedule (every row a new rate) draws no lines.
  smooth = [dict(row, lr=0.1 * (1 - row["step"] / 50)) for row in _rows(0.1)]
  run = runs.load_run(_write_run(tmp_path / "smooth", _config(0.1), smooth))
  assert runs.lr_change_epochs(run) == []


def test_config_differences_labels(two_runs, tmp_path):
  loaded = [runs.load_run(workdir) for workdir in two_runs]
  assert runs.config_differences(loaded) == ["optimizer.learning_rate=0.1",
                                             "optimizer.learning_rate=0.05"]
  # Nothing differs: the workdir names.
  twin = runs.load_run(_write_run(tmp_path / "twin", _config(0.1), _rows(0.1)))
  assert runs.config_differences([loaded[0], twin]) == ["lr0.1", "twin"]
  assert runs.config_differences(loaded[:1]) == ["lr0.1"]
  # Several keys, sorted; bookkeeping keys only when nothing else differs.
  other = _config(0.05, schedule="cosine")
  other["log_every_steps"] = 7
  cosine = runs.load_run(_write_run(tmp_path / "cosine", other, _rows(0.05)))
  assert runs.config_differences([loaded[0], cosine]) == [
      "optimizer.learning_rate=0.1, schedule.name=step",
      "optimizer.learning_rate=0.05, schedule.name=cosine"]
  logged = dict(_config(0.1), log_every_steps=7)
  logged_run = runs.load_run(_write_run(tmp_path / "logged", logged, _rows(0.1)))
  assert runs.config_differences([loaded[0], logged_run]) == [
      "log_every_steps=2", "log_every_steps=7"]


def test_flatten_config():
  flat = runs.flatten_config(_config(0.1))
  assert flat["optimizer.learning_rate"] == 0.1
  assert flat["schedule.boundaries_epochs"] == (BOUNDARY_EPOCH,)
  assert "optimizer" not in flat


def test_write_figures_writes_three_pngs(two_runs, tmp_path):
  out_dir = str(tmp_path / "figures")
  paths = figures.write_figures(two_runs, out_dir)
  assert [os.path.basename(p) for p in paths] == [
      figures.TRAINING_DYNAMICS, figures.MOVING_AVERAGE, figures.WEIGHTS]
  for path in paths:
    assert os.path.dirname(path) == out_dir
    _assert_png(path)


def test_write_figures_skips_what_was_not_measured(tmp_path):
  # No epoch-end rows: no Figure 5. No diagnostics: panels say "not measured".
  workdir = _write_run(tmp_path / "bare", _config(0.1),
                       _rows(0.1, epoch_ends=False, diagnostics=False))
  paths = figures.write_figures([workdir], str(tmp_path / "out"))
  assert [os.path.basename(p) for p in paths] == [figures.TRAINING_DYNAMICS, figures.WEIGHTS]
  for path in paths:
    _assert_png(path)
  assert not os.path.exists(tmp_path / "out" / figures.MOVING_AVERAGE)


def test_write_figures_rejects_rows_without_epochs(tmp_path):
  rows = [{"step": i, "lr": 1.5, "x": 0.1 * i, "loss": 1.0} for i in range(5)]
  workdir = _write_run(tmp_path / "synthetic", {"experiment": "synthetic_1d"}, rows)
  with pytest.raises(ConfigError, match="no epoch"):
    figures.write_figures([workdir], str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def _plot(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.plot", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)


def test_plot_entry_point(two_runs, tmp_path):
  result = _plot(f"--workdir={two_runs[0]}", f"--workdir={two_runs[1]}")
  assert result.returncode == 0, result.stderr
  printed = result.stdout.split()
  default_dir = os.path.join(two_runs[0], "figures")
  assert printed == [os.path.join(default_dir, name) for name in (
      figures.TRAINING_DYNAMICS, figures.MOVING_AVERAGE, figures.WEIGHTS)]
  for path in printed:
    _assert_png(path)

  missing = str(tmp_path / "missing")
  result = _plot(f"--workdir={two_runs[0]}", f"--workdir={missing}",
                 f"--out_dir={tmp_path / 'out'}")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and missing in lines[0], result.stderr
  assert not (tmp_path / "out").exists()


def _seed_runs(tmp_path: pathlib.Path, seeds=(0, 1, 2), lr=0.1) -> list[str]:
  """Replicates of one config (`seed_<s>` directories, as --seeds writes them)."""
  out = []
  for seed in seeds:
    config = {**_config(lr), "seed": seed}
    rows = _rows(lr + 0.001 * seed)  # other noise per seed
    out.append(_write_run(tmp_path / f"lr{lr}" / f"seed_{seed}", config, rows))
  return out


def test_seed_groups_gather_replicates_and_name_them(tmp_path):
  replicates = [runs.load_run(w) for w in _seed_runs(tmp_path)]
  other = runs.load_run(_write_run(tmp_path / "other", _config(0.05), _rows(0.05)))
  groups = runs.seed_groups([replicates[0], other, replicates[1], replicates[2]])
  assert [[r.workdir for r in g] for g in groups] == [
      [r.workdir for r in replicates], [other.workdir]]
  assert replicates[1].name == "lr0.1"  # a seed directory is named by the one above
  labels = runs.group_labels(groups)
  assert labels == ["optimizer.learning_rate=0.1: mean of 3 seeds (0, 1, 2), band: min "
                    "to max", "optimizer.learning_rate=0.05"]
  assert runs.group_labels([replicates]) == ["mean of 3 seeds (0, 1, 2), band: min to max"]


def test_a_group_of_seeds_is_drawn_as_its_mean_with_a_min_to_max_band(tmp_path):
  from matplotlib.collections import PolyCollection
  from matplotlib.figure import Figure
  replicates = [runs.load_run(w) for w in _seed_runs(tmp_path)]
  panel = figures.DYNAMICS_PANELS[2]  # gradient noise: one curve
  ax = Figure().subplots()
  assert figures._draw_panel(ax, panel, [replicates], ["C0"], [[]])
  (line,) = ax.get_lines()
  stacked = np.stack([runs.series(r, "noise_norm")[1] for r in replicates])
  np.testing.assert_allclose(line.get_ydata(), stacked.mean(0))
  (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
  vertices = band.get_paths()[0].vertices
  assert np.isclose(vertices[:, 1].max(), stacked.max()) and np.isclose(
      vertices[:, 1].min(), stacked.min())
  paths = figures.write_figures(_seed_runs(tmp_path / "again"), str(tmp_path / "out"))
  for path in paths:
    _assert_png(path)
