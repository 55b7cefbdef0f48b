"""The regime check (invmeasure.analysis.regime): its numbers on hand-made rows with
known answers, its thresholds, the entry point, and the quickstart twin on a shortened
run, where its loss floor and its non-vanishing gradient are already visible."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart
from invmeasure.analysis import regime
from invmeasure.training import loop, metric_writer
from tests.driver import REPO

SPE = 10  # steps per epoch of the hand-made runs


def _rows(seed, loss, grad, weight, steps=400):
  """Diagnostic rows every 5 steps: value(step) + small noise for each field."""
  rng = np.random.default_rng(seed)
  rows = []
  for step in range(0, steps + 1, 5):
    g = grad(step) * (1 + 0.01 * rng.standard_normal())
    rows.append({"step": step, "epoch": step / SPE, "full_loss": loss(step),
                 "objective_grad_norm": g, "grad_norm_sq_unbiased": (0.9 * g) ** 2,
                 "weight_norm": weight(step)})
  return rows


CONFIG = {"optimizer": {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4}}


def test_numbers_of_a_run_in_the_regime(seed):
  rows = _rows(seed, loss=lambda s: 0.5, grad=lambda s: 2.0 if s <= 2 * SPE else 1.0,
               weight=lambda s: 10.0)
  numbers = regime.regime_numbers(rows, CONFIG, SPE)
  assert numbers["loss_last_half"] == pytest.approx(0.5)
  assert numbers["objective_grad_norm_epoch2"] == pytest.approx(2.0, rel=0.03)
  assert numbers["objective_grad_norm_last_fifth"] == pytest.approx(1.0, rel=0.03)
  assert numbers["objective_grad_norm_ratio"] == pytest.approx(0.5, rel=0.05)
  assert numbers["grad_norm_unbiased_ratio"] == pytest.approx(0.5, rel=0.05)
  assert abs(numbers["objective_grad_norm_trend_t"]) < 5
  assert numbers["weight_norm_drift"] == pytest.approx(0.0)
  assert numbers["relaxation_time_steps"] == pytest.approx(2000)
  assert numbers["relaxation_times"] == pytest.approx(400 / 2000)
  assert all(regime.decide(numbers).values())


def test_each_property_fails_where_its_rule_says(seed):
  fitted = _rows(seed, loss=lambda s: 0.05, grad=lambda s: 1.0, weight=lambda s: 10.0)
  assert not regime.decide(regime.regime_numbers(fitted, CONFIG, SPE))[
      "loss_plateaus_above_zero"]
  vanishing = _rows(seed, loss=lambda s: 0.5, grad=lambda s: 2.0 if s <= 2 * SPE else 0.4,
                    weight=lambda s: 10.0)
  assert not regime.decide(regime.regime_numbers(vanishing, CONFIG, SPE))[
      "gradient_does_not_vanish"]
  falling = _rows(seed, loss=lambda s: 0.5, grad=lambda s: 2.0 - 0.003 * s,
                  weight=lambda s: 10.0)
  numbers = regime.regime_numbers(falling, CONFIG, SPE)
  assert numbers["objective_grad_norm_ratio"] > regime.GRADIENT_RATIO  # large, but falls
  assert numbers["objective_grad_norm_trend_t"] < -regime.TREND_T
  assert not regime.decide(numbers)["gradient_does_not_vanish"]
  drifting = _rows(seed, loss=lambda s: 0.5, grad=lambda s: 1.0, weight=lambda s: 10 + s / 40)
  numbers = regime.regime_numbers(drifting, CONFIG, SPE)
  # Means over steps (240, 320] and (320, 400]: 10 + 282.5/40 and 10 + 362.5/40.
  assert numbers["weight_norm_drift"] == pytest.approx((10 + 362.5 / 40) / (10 + 282.5 / 40) - 1)
  assert not regime.decide(numbers)["weights_equilibrated"]


def test_block_trend_matches_ordinary_least_squares_on_block_means(seed):
  rng = np.random.default_rng(seed)
  steps = np.arange(100, dtype=float)
  values = 0.01 * steps + rng.standard_normal(100)
  t = regime.block_trend_t(steps, values, blocks=10)
  x, y = steps.reshape(10, 10).mean(1), values.reshape(10, 10).mean(1)
  slope, intercept = np.polyfit(x, y, 1)
  residual = y - (slope * x + intercept)
  stderr = np.sqrt(residual @ residual / 8 / np.sum((x - x.mean()) ** 2))
  assert t == pytest.approx(slope / stderr, rel=1e-9)


def test_entry_point_prints_a_column_per_seed_and_fails_when_a_property_fails(tmp_path):
  for seed, loss in ((0, 0.5), (1, 0.05)):
    workdir = tmp_path / f"seed_{seed}"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({**CONFIG, "seed": seed}))
    rows = _rows(seed, loss=lambda s, l=loss: l, grad=lambda s: 1.0, weight=lambda s: 10.0)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "regime.md"
  result = subprocess.run([sys.executable, "-m", "experiments.regime",
                           f"--workdir={tmp_path}", f"--out={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "seed_0" in result.stdout and "seed_1" in result.stdout
  line = next(l for l in result.stdout.splitlines() if "loss plateaus above zero" in l)
  assert line.split("|")[2].strip() == "held" and "not held" in line.split("|")[3]
  assert out.read_text().strip() == result.stdout.strip()
  missing = subprocess.run([sys.executable, "-m", "experiments.regime",
                            f"--workdir={tmp_path}/nope"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
  assert missing.returncode == 1 and "does not exist" in missing.stderr
  assert "Traceback" not in missing.stderr


def test_quickstart_shortened_sits_above_zero_loss_with_a_gradient_that_stays(tmp_path):
  """A ninth of the quickstart (about one relaxation time): equilibration needs the whole
  run, but the loss floor and the gradient's persistence already show."""
  config = quickstart.get_config()
  config.num_epochs = 50  # 2,300 steps
  config.checkpoint_every_steps = 2300
  config.diagnostics.num_projections = 0
  loop.train_and_evaluate(config, str(tmp_path))
  rows = metric_writer.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  numbers = regime.regime_numbers(rows, config.to_dict(), 46)
  verdicts = regime.decide(numbers)
  assert verdicts["loss_plateaus_above_zero"], numbers
  assert verdicts["gradient_does_not_vanish"], numbers
