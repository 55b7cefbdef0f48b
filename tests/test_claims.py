"""The claims report: each rule on hand-made numbers, and the command end to end (--quick)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from invmeasure.claims import report, rules
from tests.driver import REPO
from tests.flags import FAST_CODEGEN

H, N, I = rules.HELD, rules.NOT_HELD, rules.INCONCLUSIVE
INF = float("inf")

PLATEAU = dict(loss_initial=2.0, loss_window_first=1.0, grad_norm_ratio=0.8,
               grad_norm_last=0.07, grad_norm_last_stderr=0.01)  # loss margin: 0.05

CASES = [
    ("loss_equivalent_gradient_not_vanishing",  # interval [-0.026, 0.006] inside +-0.05
     dict(PLATEAU, loss_change=-0.01, loss_change_stderr=0.01), H),
    ("loss_equivalent_gradient_not_vanishing",  # a tiny but certain change is still stable
     dict(PLATEAU, loss_change=-0.03, loss_change_stderr=0.001), H),
    ("loss_equivalent_gradient_not_vanishing",  # the loss still falls: interval below -0.05
     dict(PLATEAU, loss_change=-0.2, loss_change_stderr=0.01), N),
    ("loss_equivalent_gradient_not_vanishing",  # interval [-0.08, 0.0] crosses the margin
     dict(PLATEAU, loss_change=-0.04, loss_change_stderr=0.025), I),
    ("loss_equivalent_gradient_not_vanishing",  # the gradient norm falls to a tenth
     dict(PLATEAU, loss_change=-0.01, loss_change_stderr=0.01, grad_norm_ratio=0.1), N),
    ("loss_equivalent_gradient_not_vanishing",  # the gradient norm is within noise of 0
     dict(PLATEAU, loss_change=-0.01, loss_change_stderr=0.01, grad_norm_last_stderr=0.05), I),
    ("loss_equivalent_gradient_not_vanishing",  # pooled seeds that point opposite ways
     dict(PLATEAU, loss_change=-0.01, loss_change_stderr=0.01, seeds_opposed=1.0), I),
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
    ("step_change_vanishes", dict(change_per_step=1e-5, change_per_step_stderr=1e-5,
                                  scale=1e-2), H),
    ("step_change_vanishes", dict(change_per_step=5e-3, change_per_step_stderr=1e-4,
                                  scale=1e-2), N),
    ("step_change_vanishes", dict(change_per_step=1e-4, change_per_step_stderr=5e-3,
                                  scale=1e-2), I),
    ("balance", dict(ratio=1.1), H),
    ("balance", dict(ratio=8.0), N),
    ("balance", dict(ratio=-1.0), N),
    ("balance", dict(ratio=3.0), I),
    ("smaller_step_lowers_loss", {"change_1": 0.0, "change_0.5": -1.0, "stderr_0.5": 0.1}, H),
    ("smaller_step_lowers_loss", {"change_1": 0.0, "change_0.5": 1.0, "stderr_0.5": 0.1}, N),
    ("smaller_step_lowers_loss", {"change_1": 0.0, "change_0.5": -0.1, "stderr_0.5": 0.1}, I),
    # Growth of the separation from lag 2 to lag 5, against +-0.1.
    ("measure_stops_spreading", dict(separation_growth=0.01, separation_growth_stderr=0.02,
                                     travel_ratio=1.0), H),  # [-0.023, 0.043]
    ("measure_stops_spreading", dict(separation_growth=0.3, separation_growth_stderr=0.02,
                                     travel_ratio=1.0), N),
    ("measure_stops_spreading", dict(separation_growth=0.01, separation_growth_stderr=0.02,
                                     travel_ratio=0.1), N),  # the weights stopped moving
    ("measure_stops_spreading", dict(separation_growth=0.09, separation_growth_stderr=0.04,
                                     travel_ratio=1.0), I),  # [0.024, 0.156]
    ("measure_stops_spreading", dict(separation_growth=0.01, travel_ratio=1.0), I),  # 1 seed
    ("time_average_equivalent", dict(fluctuation=0.25, average_change=-0.01,
                                     average_change_stderr=0.01), H),  # margin 0.05
    ("time_average_equivalent", dict(fluctuation=0.25, average_change=0.2,
                                     average_change_stderr=0.01), N),
    ("time_average_equivalent", dict(fluctuation=0.25, average_change=0.04,
                                     average_change_stderr=0.01), I),
]

LEGACY_CASES = [  # the replaced rules, kept to show their verdicts beside the new ones
    ("loss_equivalent_gradient_not_vanishing",
     dict(loss_window_first=0.010, loss_window_first_stderr=0.002, loss_window_last=0.008,
          loss_window_last_stderr=0.002, grad_norm_ratio=0.8, grad_norm_last=0.07,
          grad_norm_last_stderr=0.01), H),
    ("loss_equivalent_gradient_not_vanishing",  # a significant trend, however small
     dict(loss_window_first=0.750, loss_window_first_stderr=0.007, loss_window_last=0.729,
          loss_window_last_stderr=0.007, grad_norm_ratio=0.96, grad_norm_last=0.5,
          grad_norm_last_stderr=0.014), N),
    ("step_change_vanishes", dict(change=1e-4, change_stderr=1e-4, scale=1e-2), H),
    ("step_change_vanishes", dict(change=1e-4, change_stderr=5e-3, scale=1e-2), I),
    ("measure_stops_spreading", dict(separation_last=0.5, separation_null=0.45,
                                     travel_ratio=1.0), H),
    ("measure_stops_spreading", dict(separation_last=0.9, separation_null=0.45,
                                     travel_ratio=1.0), N),
    ("measure_stops_spreading", dict(separation_last=0.65, separation_null=0.45,
                                     travel_ratio=1.0), I),
    ("time_average_equivalent", dict(fluctuation=1.0, average_change=-0.01, time_average=1.0,
                                     time_average_stderr=0.1), H),
    ("time_average_equivalent", dict(fluctuation=1.0, average_change=0.5, time_average=1.0,
                                     time_average_stderr=0.1), N),
]


@pytest.mark.parametrize("rule,numbers,expected", LEGACY_CASES)
def test_each_replaced_rule_still_gives_its_old_verdict(rule, numbers, expected):
  assert rules.LEGACY_RULES[rule][1].decide(numbers) == expected
  assert rules.legacy_verdict(rule, [numbers]) == (rules.LEGACY_RULES[rule][0], expected)


def test_equivalence_interval_against_the_margin():
  z = rules.Z90
  assert z == pytest.approx(1.6449, abs=1e-4)
  assert rules.equivalence(0.0, 1.0, z + 1e-9) == H
  assert rules.equivalence(0.0, 1.0, z - 1e-9) == I
  assert rules.equivalence(2 * z + 1e-9, 1.0, z) == N
  assert rules.equivalence(-(2 * z + 1e-9), 1.0, z) == N
  assert rules.equivalence(0.0, math.nan, 1.0) == I


def _random_effects_reference(values, errors):
  """DerSimonian-Laird, in float64 numpy."""
  k = len(values)
  w = 1 / errors ** 2
  fixed = np.sum(w * values) / np.sum(w)
  q = np.sum(w * (values - fixed) ** 2)
  tau2 = max(0.0, (q - (k - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
  ws = 1 / (errors ** 2 + tau2)
  return np.sum(ws * values) / ws.sum(), ws.sum() ** -0.5, q, tau2


@pytest.mark.parametrize("spread", [0.01, 1.0])  # tau^2 = 0 and tau^2 > 0
def test_pool_matches_a_random_effects_reference(spread):
  rng = np.random.default_rng()
  values, errors = spread * rng.normal(size=4), rng.uniform(0.1, 0.3, size=4)
  mean, stderr, q, tau2 = _random_effects_reference(values, errors)
  pooled = rules.pool(values, errors)
  assert pooled.mean == pytest.approx(mean) and pooled.q == pytest.approx(q)
  assert pooled.stderr == pytest.approx(stderr)
  assert pooled.between_sd == pytest.approx(np.sqrt(tau2))
  assert pooled.p == pytest.approx(scipy_stats.chi2.sf(q, 3))
  if spread < 0.1:  # the seeds agree: the inverse-variance pool
    w = errors ** -2.0
    assert tau2 == 0 and pooled.mean == pytest.approx(np.sum(w * values) / w.sum())
  else:
    assert tau2 > 0
  assert math.isnan(rules.pool([1.0, 2.0], [0.1, 0.0]).mean)
  assert rules.pool([1.5], [0.2])[:2] == (1.5, 0.2)  # one seed: its own estimate


def test_pool_without_per_seed_errors_uses_the_seeds_spread():
  values = np.random.default_rng().normal(size=3)
  pooled = rules.pool(values)
  t = scipy_stats.t.ppf(0.95, 2)
  assert pooled.mean == pytest.approx(values.mean())
  assert rules.Z90 * pooled.stderr == pytest.approx(t * values.std(ddof=1) / np.sqrt(3))
  assert math.isnan(rules.pool([1.0]).mean)


def test_pooled_claim_decides_the_pooled_numbers_and_carries_the_seeds_spread():
  agree = [dict(early=1.0, early_stderr=0.1, late=1.25, late_stderr=0.1)] * 3
  claims = [report.make_claim("k", "s", "e", "grows", n) for n in agree]
  combined = report.combine((0, 1, 2), claims)
  assert combined.seed_verdicts == (I, I, I)  # each seed alone cannot tell
  assert combined.numbers["late_stderr"] == pytest.approx(0.1 / math.sqrt(3))
  assert combined.verdict == H == rules.decide("grows", combined.numbers)
  # Seeds settling at levels of their own: the spread widens the interval.
  spread = [dict(early=1.0, early_stderr=0.01, late=late, late_stderr=0.01)
            for late in (1.05, 1.25, 1.65)]
  combined = report.combine((0, 1, 2), [report.make_claim("k", "s", "e", "grows", n)
                                        for n in spread])
  assert combined.seed_verdicts == (H, H, H)
  assert combined.numbers["heterogeneity_p_late"] < 1e-6
  assert combined.numbers["between_seed_sd_late"] == pytest.approx(0.3055, rel=0.01)
  assert combined.verdict == I
  # Seeds that, alone, decide opposite ways.
  opposite = [dict(early=1.0, early_stderr=0.01, late=late, late_stderr=0.01)
              for late in (1.5, 1.5, 0.5)]
  combined = report.combine((0, 1, 2), [report.make_claim("k", "s", "e", "grows", n)
                                        for n in opposite])
  assert combined.seed_verdicts == (H, H, N) and combined.numbers["seeds_opposed"] == 1
  assert combined.verdict == I


def test_separation_by_lag_is_flat_for_one_measure_and_rises_under_drift():
  from invmeasure.analysis import invariant
  rng = np.random.default_rng()
  still = [rng.normal(size=(300, 4)) for _ in range(6)]
  drifting = [rng.normal(size=(300, 4)) + 0.25 * i for i in range(6)]
  flat, rising = invariant.separation_by_lag(still), invariant.separation_by_lag(drifting)
  assert flat.shape == rising.shape == (5,)
  assert abs(flat[-1] - flat[1]) < 0.1
  # Mean shifts of 0.5 and 1.25 sd along each axis: separations of about 0.3 and 0.7.
  assert rising[-1] - rising[1] > 0.25 and np.all(np.diff(rising) > 0)
  assert rising[0] == pytest.approx(np.mean([invariant.separation(drifting[i], drifting[i + 1])
                                             for i in range(5)]))


@pytest.mark.parametrize("rule,numbers,expected", CASES)
def test_each_rule_gives_the_verdict_its_text_states(rule, numbers, expected):
  assert rules.decide(rule, numbers) == expected


def test_every_rule_has_a_held_and_a_not_held_case():
  assert set(rules.LEGACY_RULES) <= set(rules.RULES)
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
  numbers = [dict(ratio=1.0), dict(ratio=1.2), dict(ratio=3.0)]  # `balance` is per seed
  per_seed = [report.make_claim("k", "s", "e", "balance", n) for n in numbers]
  combined = report.combine((0, 1, 2), per_seed)
  assert combined.seed_verdicts == (H, H, I) and combined.verdict == H
  assert combined.numbers["ratio"] == pytest.approx(5.2 / 3)
  assert combined.per_seed == tuple(c.numbers for c in per_seed)
  with pytest.raises(ValueError, match="one claim measured per seed"):
    report.combine((0, 1), [per_seed[0], report.make_claim("other", "s", "e", "balance",
                                                           numbers[0])])


EXPECTED_CLAIMS = {
    "fig1_loss_stable_gradient_not_vanishing", "fig2_smaller_lr_larger_grad_norm",
    "fig2_smaller_lr_larger_noise_norm", "fig2_smaller_lr_larger_sharpness", "fig2_noise_grows",
    "fig1_lr_decay_lowers_loss", "fig6_overfit_gradient_vanishes",
    "fig5_moving_average_smoother", "fig4_synthetic_regimes", "birkhoff_full_loss",
    "birkhoff_grad_norm", "birkhoff_sharpness", "measure_converges_weights_move",
    "thm43_inside_ball", "eq10_balance_lr_0.1", "eq10_balance_plain_sgd",
    "a2_estimators_converge", "a2_bias_correction", "thm43_one_step_change_vanishes",
    "thm52_smaller_step_lowers_loss", "fig3_text_loss_stable_gradient_not_vanishing",
    "fig3_text_smaller_lr_larger_grad_norm", "fig3_text_cosine_ends_lower",
}


def test_quick_report_end_to_end_every_verdict_follows_from_its_numbers(tmp_path):
  workdir = str(tmp_path / "claims")
  # One device and fast code generation: 88 s instead of 112 s on 2 idle cores; the test
  # checks that verdicts follow from numbers, not the numbers.
  env = {**os.environ, "XLA_FLAGS": FAST_CODEGEN}
  # Two runs at a time, each pinned to a core, on the seeds given.
  result = subprocess.run([sys.executable, "-m", "experiments.claims", f"--workdir={workdir}",
                           "--quick", "--seeds=0,1", "--jobs=2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
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
      if rules.RULES[claim.rule].pooled is not None:
        assert claim.numbers == pytest.approx(rules.pooled_numbers(claim.rule, claim.per_seed),
                                              nan_ok=True), claim.key
        assert claim.verdict == rules.decide(claim.rule, claim.numbers), claim.key
      else:
        assert claim.verdict == rules.combine(list(claim.seed_verdicts)), claim.key
    assert claim.statement in markdown and rules.RULES[claim.rule].text in markdown
    section = markdown[markdown.index(claim.statement + "\n"):]
    for name, value in claim.numbers.items():
      row = f"| `{name}` | {report._format(value)} |"
      if claim.seeds:
        row += " " + " | ".join(report._format(n[name]) if name in n else ""
                                for n in claim.per_seed) + " |"
      assert row in section, (claim.key, name)
    for figure in claim.figures:
      assert os.path.getsize(os.path.join(workdir, figure)) > 0, figure
  assert "quick" in markdown
