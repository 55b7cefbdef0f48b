"""The claims report: each rule on hand-made numbers, and the command end to end (--quick)."""

import math
import os
import subprocess
import sys

import pytest

from invmeasure.claims import report, rules
from tests.driver import FAST_CODEGEN, REPO

H, N, I = rules.HELD, rules.NOT_HELD, rules.INCONCLUSIVE
INF = float("inf")

CASES = [
    ("loss_stable_gradient_not_vanishing",
     dict(loss_window_first=0.010, loss_window_first_stderr=0.002, loss_window_last=0.008,
          loss_window_last_stderr=0.002, grad_norm_ratio=0.8, grad_norm_last=0.07,
          grad_norm_last_stderr=0.01), H),
    ("loss_stable_gradient_not_vanishing",  # the loss still falls: a significant trend
     dict(loss_window_first=0.10, loss_window_first_stderr=0.002, loss_window_last=0.05,
          loss_window_last_stderr=0.002, grad_norm_ratio=0.8, grad_norm_last=0.07,
          grad_norm_last_stderr=0.01), N),
    ("loss_stable_gradient_not_vanishing",  # the gradient norm falls to a tenth
     dict(loss_window_first=0.010, loss_window_first_stderr=0.002, loss_window_last=0.008,
          loss_window_last_stderr=0.002, grad_norm_ratio=0.1, grad_norm_last=0.07,
          grad_norm_last_stderr=0.01), N),
    ("loss_stable_gradient_not_vanishing",
     dict(loss_window_first=0.010, loss_window_first_stderr=0.002, loss_window_last=0.008,
          loss_window_last_stderr=0.002, grad_norm_ratio=0.8, grad_norm_last=0.02,
          grad_norm_last_stderr=0.01), I),
    ("smaller_lr_larger", dict(mean_0=1.0, stderr_0=0.1, mean_1=2.0, stderr_1=0.1,
                               mean_2=3.0, stderr_2=0.1), H),
    ("smaller_lr_larger", dict(mean_0=1.0, stderr_0=0.1, mean_1=2.0, stderr_1=0.1,
                               mean_2=1.2, stderr_2=0.1), N),
    ("smaller_lr_larger", dict(mean_0=1.0, stderr_0=0.1, mean_1=1.1, stderr_1=0.1,
                               mean_2=3.0, stderr_2=0.1), I),
    ("grows", dict(early=1.0, early_stderr=0.1, late=2.0, late_stderr=0.1), H),
    ("grows", dict(early=2.0, early_stderr=0.1, late=1.0, late_stderr=0.1), N),
    ("grows", dict(early=1.0, early_stderr=0.3, late=1.5, late_stderr=0.3), I),
    ("grows", dict(early=1.0, early_stderr=math.nan, late=1.5, late_stderr=0.3), I),
    ("drops", dict(before=2.0, before_stderr=0.1, after=1.0, after_stderr=0.1), H),
    ("drops", dict(before=1.0, before_stderr=0.1, after=2.0, after_stderr=0.1), N),
    ("vanishes", dict(grad_norm_last=0.01, grad_norm_max=1.0, full_loss_last=0.001), H),
    ("vanishes", dict(grad_norm_last=0.5, grad_norm_max=1.0, full_loss_last=0.001), N),
    ("vanishes", dict(grad_norm_last=0.1, grad_norm_max=1.0, full_loss_last=0.001), I),
    ("smoother", dict(roughness_ratio=2.0), H),
    ("smoother", dict(roughness_ratio=0.9), N),
    ("smoother", dict(roughness_ratio=1.2), I),
    ("synthetic_regimes", dict(below_final_grad_norm=0.0, above_grad_norm_time_avg=0.45,
                               above_loss_fluctuation=0.7, above_loss_time_avg_change=0.01), H),
    ("synthetic_regimes", dict(below_final_grad_norm=0.0, above_grad_norm_time_avg=0.01,
                               above_loss_fluctuation=0.7, above_loss_time_avg_change=0.01), N),
    ("estimators_converge", dict(sample_size_loss=1, sample_size_noise_sq=16, largest=64), H),
    ("estimators_converge", dict(sample_size_loss=1, sample_size_noise_sq=INF, largest=64), N),
    ("corrected_no_slower", dict(plain_bias_at_1=1.5, plain_sample_size=64,
                                 corrected_sample_size=16, tolerance=0.1), H),
    ("corrected_no_slower", dict(plain_bias_at_1=1.5, plain_sample_size=16,
                                 corrected_sample_size=INF, tolerance=0.1), N),
    ("corrected_no_slower", dict(plain_bias_at_1=0.05, plain_sample_size=16,
                                 corrected_sample_size=16, tolerance=0.1), I),
    ("inside_ball", dict(max_weight_norm=10.0, radius=20.0), H),
    ("inside_ball", dict(max_weight_norm=30.0, radius=20.0), N),
    ("gain_vanishes", dict(change=1e-4, change_stderr=1e-4, scale=1e-2), H),
    ("gain_vanishes", dict(change=5e-3, change_stderr=1e-4, scale=1e-2), N),
    ("gain_vanishes", dict(change=1e-4, change_stderr=5e-3, scale=1e-2), I),
    ("balance", dict(ratio=1.1), H),
    ("balance", dict(ratio=8.0), N),
    ("balance", dict(ratio=-1.0), N),
    ("balance", dict(ratio=3.0), I),
    ("smaller_step_lowers_loss", {"change_1": 0.0, "change_0.5": -1.0, "stderr_0.5": 0.1}, H),
    ("smaller_step_lowers_loss", {"change_1": 0.0, "change_0.5": 1.0, "stderr_0.5": 0.1}, N),
    ("smaller_step_lowers_loss", {"change_1": 0.0, "change_0.5": -0.1, "stderr_0.5": 0.1}, I),
    ("measure_converges", dict(separation_last=0.1, travel_ratio=1.0), H),
    ("measure_converges", dict(separation_last=0.9, travel_ratio=1.0), N),
    ("measure_converges", dict(separation_last=0.1, travel_ratio=0.1), I),
    ("time_average_converges", dict(fluctuation=1.0, average_change=0.01, time_average=1.0,
                                    time_average_stderr=0.1), H),
    ("time_average_converges", dict(fluctuation=1.0, average_change=0.5, time_average=1.0,
                                    time_average_stderr=0.1), N),
    ("time_average_converges", dict(fluctuation=1.0, average_change=0.3, time_average=1.0,
                                    time_average_stderr=0.1), I),
]


@pytest.mark.parametrize("rule,numbers,expected", CASES)
def test_each_rule_gives_the_verdict_its_text_states(rule, numbers, expected):
  assert rules.decide(rule, numbers) == expected


def test_every_rule_has_a_held_and_a_not_held_case():
  for rule in rules.RULES:
    verdicts = {expected for name, _, expected in CASES if name == rule}
    assert {H, N} <= verdicts, rule


@pytest.mark.parametrize("verdicts,expected", [
    ((H, H, H), H), ((H, H, I), H), ((H, I, I), I), ((H, H, N), I),
    ((N, N, I), N), ((N, N, H), I), ((I, I, I), I), ((H,), H), ((N,), N),
])
def test_seed_verdicts_combine_as_the_text_states(verdicts, expected):
  assert rules.combine(list(verdicts)) == expected


def test_combined_claim_keeps_each_seeds_numbers_and_averages_them():
  numbers = [dict(early=1.0, early_stderr=0.1, late=2.0, late_stderr=0.1),
             dict(early=1.0, early_stderr=0.1, late=1.9, late_stderr=0.1),
             dict(early=1.0, early_stderr=0.5, late=1.1, late_stderr=0.5)]
  per_seed = [report.make_claim("k", "s", "e", "grows", n) for n in numbers]
  combined = report.combine((0, 1, 2), per_seed)
  assert combined.seed_verdicts == (H, H, I) and combined.verdict == H
  assert combined.numbers["late"] == pytest.approx(5.0 / 3)
  assert combined.per_seed == tuple(c.numbers for c in per_seed)
  with pytest.raises(ValueError, match="one claim measured per seed"):
    report.combine((0, 1), [per_seed[0], report.make_claim("other", "s", "e", "grows",
                                                           numbers[0])])


EXPECTED_CLAIMS = {
    "fig1_loss_stable_gradient_not_vanishing", "fig2_smaller_lr_larger_grad_norm",
    "fig2_smaller_lr_larger_noise_norm", "fig2_smaller_lr_larger_sharpness", "fig2_noise_grows",
    "fig1_lr_decay_lowers_loss", "fig6_overfit_gradient_vanishes",
    "fig5_moving_average_smoother", "fig4_synthetic_regimes", "birkhoff_full_loss",
    "birkhoff_grad_norm", "birkhoff_sharpness", "measure_converges_weights_move",
    "thm43_inside_ball", "eq10_balance_lr_0.1", "eq10_balance_plain_sgd",
    "a2_estimators_converge", "a2_bias_correction", "thm43_one_step_change_vanishes",
    "thm52_smaller_step_lowers_loss",
}


def test_quick_report_end_to_end_every_verdict_follows_from_its_numbers(tmp_path):
  workdir = str(tmp_path / "claims")
  # One device and fast code generation: 88 s instead of 112 s on 2 idle cores; the test
  # checks that verdicts follow from numbers, not the numbers.
  env = {**os.environ, "XLA_FLAGS": FAST_CODEGEN}
  result = subprocess.run([sys.executable, "-m", "experiments.claims", f"--workdir={workdir}",
                           "--quick"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  claims = report.read(workdir)
  assert {c.key for c in claims} == EXPECTED_CLAIMS
  markdown = open(os.path.join(workdir, "claims.md"), encoding="utf-8").read()
  for claim in claims:
    if claim.key == "fig4_synthetic_regimes":  # deterministic: one run, no seeds
      assert not claim.seeds
      assert claim.verdict == rules.decide(claim.rule, claim.numbers)
    else:
      assert claim.seeds == (0, 1), claim.key
      assert claim.seed_verdicts == tuple(rules.decide(claim.rule, n) for n in claim.per_seed)
      assert claim.verdict == rules.combine(list(claim.seed_verdicts)), claim.key
    assert claim.statement in markdown and rules.RULES[claim.rule].text in markdown
    section = markdown[markdown.index(claim.statement + "\n"):]
    for name, value in claim.numbers.items():
      row = f"| `{name}` | {report._format(value)} |"
      if claim.seeds:
        row += " " + " | ".join(report._format(n[name]) for n in claim.per_seed) + " |"
      assert row in section, (claim.key, name)
    for figure in claim.figures:
      assert os.path.getsize(os.path.join(workdir, figure)) > 0, figure
  assert "quick" in markdown
