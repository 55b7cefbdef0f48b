"""How each claim's verdict follows from its measured numbers.

A rule is a pure function of the numbers the report prints next to it, so anyone can
check a verdict by hand, and the tests recompute every verdict from the report. The
thresholds are fixed here, before any run, and are the same in quick and full mode.
Verdicts: HELD, NOT_HELD, INCONCLUSIVE (the numbers cannot tell, e.g. the difference
is within the standard errors).

Every training run is repeated over several seeds, independent replicates of one
experiment. Where a claim's per-seed numbers are means with standard errors of the same
quantity (`Rule.pooled` names them), the seeds are pooled (`pool`) and the rule decides
the pooled numbers. The pool is random-effects: each seed's run settles at a level of its
own (a seed-to-seed spread that is part of the experiment, not an error), so the pooled
interval carries that spread, estimated from the seeds (DerSimonian-Laird). Cochran's Q
and the between-seed standard deviation are printed. A claim whose seeds, each decided alone, point in opposite
directions (one held, one not held) is inconclusive (`seeds_opposed`). Other claims are
decided per seed and the verdicts combined (`COMBINE_TEXT`).

"Something stops changing" is decided by equivalence, never by failing to detect a
change (which the longer the run, the surer it is to find): held when the 90% confidence
interval of the change lies inside a margin fixed in advance (two one-sided tests at 5%),
not held when it lies entirely outside, otherwise inconclusive (`equivalence`). Each such
rule says how its margin is set and why.

Rules and margins were fixed on 2026-12-03, before the full run that they judge; the
random-effects pool, the opposed-seeds gate and claim 13's lag test replaced the fixed-effect
pool, its heterogeneity gate and the interleaved null later that day, before the runs on
seeds 6, 7 and 8 (the replication) began.
`LEGACY_RULES` keeps the rules they replaced, so a report can show both verdicts.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

from scipy import stats

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
Numbers = Mapping[str, float]


# Two one-sided tests at 5% each: the 90% two-sided interval.
Z90 = float(stats.norm.ppf(0.95))
# Claim 1: the loss is stable when the second half lowered it by less than 5% of the
# progress the run had already made (initial loss minus the first plateau window's).
LOSS_MARGIN_FRACTION = 0.05
# Claims 10-12: a time average has converged when it moved over the last window by less
# than a fifth of one iterate's typical deviation (the last window's coefficient of
# variation): the average is still, the iterates are not. A fifth is the replaced rule's
# "fluctuation at least 5x the change"; now the change's interval must meet it.
TIME_AVERAGE_MARGIN_FRACTION = 0.2
# Claim 19: the expected one-step change of F vanishes when its time average is within a
# tenth of the typical size of one step's change |F(x + u) - F(x)|.
STEP_CHANGE_MARGIN_FRACTION = 0.1
# Claim 13: the measure has stopped moving when windows five relaxation times apart are
# no further apart than windows two apart (`separation` growth with lag, 0 for one measure):
# within a tenth of the way to disjoint. Lag 2 is the reference, not lag 1, so that no pair
# shares the autocorrelated rows at a common boundary.
MEASURE_GROWTH_MARGIN = 0.1
# The rule it replaced (against interleaved halves of one window), kept for the report.
MEASURE_EXCESS_HELD, MEASURE_EXCESS_NOT_HELD = 0.1, 0.3

Pairs = Callable[[Numbers], list[tuple[str, str]]]


class Rule(NamedTuple):
  text: str                         # the rule in one or two sentences, printed in the report
  decide: Callable[[Numbers], str]  # numbers -> verdict
  # Pooled claims: (value, standard error) names of the quantities pooled over seeds.
  pooled: Pairs | None = None
  # A line the report prints under the numbers (e.g. an interval against its margin).
  explain: Callable[[Numbers], str] | None = None


class Pooled(NamedTuple):
  mean: float
  stderr: float
  q: float       # Cochran's heterogeneity statistic (NaN without per-seed errors)
  p: float       # its chi-squared p-value on (seeds - 1) degrees of freedom
  between_sd: float  # the between-seed standard deviation tau


def pool(values: Sequence[float], stderrs: Sequence[float] | None = None) -> Pooled:
  """Random-effects pool of replicate estimates (NaN where any input is not finite).

  With per-seed standard errors s_i (DerSimonian-Laird): weights 1 / (s_i^2 + tau^2),
  tau^2 the between-seed variance estimated from Cochran's Q (0 when the seeds agree
  within their errors, which makes this the inverse-variance pool); standard error
  1 / sqrt(sum of the weights). With three seeds tau is itself uncertain, so the interval
  is approximate; the opposed-seeds gate guards against the worst case. Without per-seed
  errors (`stderrs` None: a statistic a seed gives no error for), the seeds' plain mean and
  sd / sqrt(k), scaled by t_{k-1}(0.95) / Z90 so that a rule's normal-quantile interval on
  it is the one-sample t interval. One seed with its error is returned as it is.
  """
  values = [float(v) for v in values]
  k = len(values)
  nan = Pooled(math.nan, math.nan, math.nan, math.nan, math.nan)
  if k == 0 or not all(map(math.isfinite, values)):
    return nan
  if stderrs is None:
    if k < 2:
      return nan
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    t_over_z = float(stats.t.ppf(0.95, k - 1)) / Z90
    return Pooled(mean, sd / math.sqrt(k) * t_over_z, math.nan, math.nan, sd)
  errors = [float(e) for e in stderrs]
  if not all(map(math.isfinite, errors)) or any(e <= 0 for e in errors):
    return nan
  if k == 1:
    return Pooled(values[0], errors[0], 0.0, 1.0, 0.0)
  w = [1 / e ** 2 for e in errors]
  fixed = sum(wi * v for wi, v in zip(w, values)) / sum(w)
  q = sum(wi * (v - fixed) ** 2 for wi, v in zip(w, values))
  tau2 = max(0.0, (q - (k - 1)) / (sum(w) - sum(wi ** 2 for wi in w) / sum(w)))
  w_star = [1 / (e ** 2 + tau2) for e in errors]
  mean = sum(wi * v for wi, v in zip(w_star, values)) / sum(w_star)
  return Pooled(mean, 1 / math.sqrt(sum(w_star)), q, float(stats.chi2.sf(q, k - 1)),
                math.sqrt(tau2))


def pooled_numbers(rule: str, per_seed: Sequence[Numbers]) -> dict[str, float]:
  """A pooled claim's numbers: for each pair of `RULES[rule].pooled`, the pooled value
  and standard error (`pool`; a standard error the seeds do not give is taken from their
  spread), `heterogeneity_p_<value>` and `between_seed_sd_<value>`; `seeds_opposed` (1 if
  some seed alone reads held and another not held); every other number the seeds' mean."""
  first = per_seed[0]
  out = {name: sum(n.get(name, math.nan) for n in per_seed) / len(per_seed) for name in first}
  for value, stderr in RULES[rule].pooled(first):
    errors = [n[stderr] for n in per_seed] if stderr in first else None
    result = pool([n[value] for n in per_seed], errors)
    out[value], out[stderr] = result.mean, result.stderr
    out[f"heterogeneity_p_{value}"] = result.p
    out[f"between_seed_sd_{value}"] = result.between_sd
  verdicts = {decide(rule, n) for n in per_seed}
  out["seeds_opposed"] = float(HELD in verdicts and NOT_HELD in verdicts)
  return out


def opposed(n: Numbers) -> bool:
  """Whether the pooled seeds, each decided alone, point in opposite directions."""
  return bool(n.get("seeds_opposed", 0.0))


def equivalence(change: float, stderr: float, margin: float) -> str:
  """HELD if change +- Z90 * stderr lies inside (-margin, margin), NOT_HELD if entirely
  outside [-margin, margin], otherwise INCONCLUSIVE."""
  if not all(map(math.isfinite, (change, stderr, margin))) or margin <= 0:
    return INCONCLUSIVE
  low, high = change - Z90 * stderr, change + Z90 * stderr
  if -margin < low and high < margin:
    return HELD
  if low > margin or high < -margin:
    return NOT_HELD
  return INCONCLUSIVE


def interval_text(change: float, stderr: float, margin: float, what: str) -> str:
  return (f"{what}: {change:.4g}, 90% interval [{change - Z90 * stderr:.4g}, "
          f"{change + Z90 * stderr:.4g}] against the margin +-{margin:.4g}: "
          f"{equivalence(change, stderr, margin)}.")


def _pairs(*pairs: tuple[str, str]) -> Pairs:
  return lambda n: list(pairs)


def _finite(numbers: Numbers, *names: str) -> bool:
  return all(isinstance(numbers.get(n), (int, float)) and math.isfinite(numbers[n])
             for n in names)


def _loss_stable_gradient_not_vanishing(n: Numbers) -> str:
  if not _finite(n, "loss_window_first", "loss_window_first_stderr", "loss_window_last",
                 "loss_window_last_stderr", "grad_norm_ratio", "grad_norm_last",
                 "grad_norm_last_stderr"):
    return INCONCLUSIVE
  if n["grad_norm_last"] < 3 * n["grad_norm_last_stderr"]:
    return INCONCLUSIVE
  loss_margin = 2 * math.hypot(n["loss_window_first_stderr"], n["loss_window_last_stderr"])
  loss_stable = abs(n["loss_window_last"] - n["loss_window_first"]) <= loss_margin
  if loss_stable and n["grad_norm_ratio"] >= 0.5:
    return HELD
  return NOT_HELD


def _loss_margin(n: Numbers) -> float:
  return LOSS_MARGIN_FRACTION * (n["loss_initial"] - n["loss_window_first"])


def _loss_equivalent_gradient_not_vanishing(n: Numbers) -> str:
  """Claim 1 by equivalence: the loss's change across the plateau within the margin, and
  a gradient norm that keeps at least half its size, clear of zero."""
  if not _finite(n, "loss_initial", "loss_window_first", "loss_change", "loss_change_stderr",
                 "grad_norm_ratio", "grad_norm_last", "grad_norm_last_stderr") \
      or opposed(n):
    return INCONCLUSIVE
  loss = equivalence(n["loss_change"], n["loss_change_stderr"], _loss_margin(n))
  if loss == NOT_HELD or n["grad_norm_ratio"] < 0.5:
    return NOT_HELD
  if loss == HELD and n["grad_norm_last"] >= 3 * n["grad_norm_last_stderr"]:
    return HELD
  return INCONCLUSIVE


def _loss_interval(n: Numbers) -> str:
  return interval_text(n["loss_change"], n["loss_change_stderr"], _loss_margin(n),
                       "Loss change across the plateau")


def _ordered_decreasing_in_lr(n: Numbers) -> str:
  """`mean_i`, `stderr_i` for learning rates in decreasing order (i = 0, 1, ...)."""
  count = sum(1 for k in n if k.startswith("mean_"))
  means = [n[f"mean_{i}"] for i in range(count)]
  errors = [n[f"stderr_{i}"] for i in range(count)]
  if count < 2 or not all(map(math.isfinite, means + errors)) or opposed(n):
    return INCONCLUSIVE
  gaps = [(means[i + 1] - means[i], 2 * math.hypot(errors[i], errors[i + 1]))
          for i in range(count - 1)]
  if all(gap > margin for gap, margin in gaps):
    return HELD
  if any(gap < -margin for gap, margin in gaps):
    return NOT_HELD
  return INCONCLUSIVE


def _exceeds(n: Numbers, low: str, high: str) -> str:
  """Held if n[high] exceeds n[low] by more than twice the combined standard error
  (fields `<name>_stderr`), not held if it falls short by more than that."""
  if not _finite(n, low, f"{low}_stderr", high, f"{high}_stderr") or opposed(n):
    return INCONCLUSIVE
  margin = 2 * math.hypot(n[f"{low}_stderr"], n[f"{high}_stderr"])
  if n[high] - n[low] > margin:
    return HELD
  if n[low] - n[high] > margin:
    return NOT_HELD
  return INCONCLUSIVE


def _grows(n: Numbers) -> str:
  return _exceeds(n, "early", "late")


def _drops(n: Numbers) -> str:
  return _exceeds(n, "after", "before")


def _vanishes(n: Numbers) -> str:
  if not _finite(n, "grad_norm_last", "grad_norm_max", "full_loss_last"):
    return INCONCLUSIVE
  ratio = n["grad_norm_last"] / n["grad_norm_max"]
  if ratio <= 0.05 and n["full_loss_last"] <= 0.01:
    return HELD
  if ratio >= 0.2:
    return NOT_HELD
  return INCONCLUSIVE


def _smoother(n: Numbers) -> str:
  if not _finite(n, "roughness_ratio"):
    return INCONCLUSIVE
  if n["roughness_ratio"] >= 1.5:
    return HELD
  if n["roughness_ratio"] < 1.0:
    return NOT_HELD
  return INCONCLUSIVE


def _synthetic_regimes(n: Numbers) -> str:
  if not _finite(n, "below_final_grad_norm", "above_grad_norm_time_avg",
                 "above_loss_fluctuation", "above_loss_time_avg_change"):
    return INCONCLUSIVE
  converges_below = n["below_final_grad_norm"] <= 1e-6
  oscillates_above = (n["above_grad_norm_time_avg"] >= 0.1
                      and n["above_loss_fluctuation"] >= 10 * n["above_loss_time_avg_change"])
  return HELD if converges_below and oscillates_above else NOT_HELD


def _estimators_converge(n: Numbers) -> str:
  """`sample_size_<q>`: the smallest n within tolerance (inf: none up to `largest`)."""
  sizes = {k: v for k, v in n.items() if k.startswith("sample_size_")}
  if not sizes or not _finite(n, "largest"):
    return INCONCLUSIVE
  return HELD if all(v <= n["largest"] for v in sizes.values()) else NOT_HELD


def _corrected_no_slower(n: Numbers) -> str:
  if (not _finite(n, "plain_bias_at_1", "tolerance") or "plain_sample_size" not in n
      or "corrected_sample_size" not in n):
    return INCONCLUSIVE
  plain, corrected = n["plain_sample_size"], n["corrected_sample_size"]
  if n["plain_bias_at_1"] <= n["tolerance"]:
    return INCONCLUSIVE  # nothing to correct at this noise level
  if corrected <= plain and math.isfinite(corrected):
    return HELD
  return NOT_HELD


def _inside_ball(n: Numbers) -> str:
  if not _finite(n, "max_weight_norm", "radius"):
    return INCONCLUSIVE
  return HELD if n["max_weight_norm"] <= n["radius"] else NOT_HELD


def _step_change_margin(n: Numbers) -> float:
  return STEP_CHANGE_MARGIN_FRACTION * n["scale"]


def _step_change_vanishes(n: Numbers) -> str:
  """Claim 19 by equivalence: the run's mean one-step change of F over its plateau
  (`change_per_step`, telescoped from the diagnostic rows) within a tenth of `scale`."""
  if not _finite(n, "change_per_step", "change_per_step_stderr", "scale") or opposed(n):
    return INCONCLUSIVE
  return equivalence(n["change_per_step"], n["change_per_step_stderr"],
                     _step_change_margin(n))


def _step_change_interval(n: Numbers) -> str:
  return interval_text(n["change_per_step"], n["change_per_step_stderr"],
                       _step_change_margin(n), "Mean one-step change of F")


def _gain_vanishes(n: Numbers) -> str:
  if not _finite(n, "change", "change_stderr", "scale"):
    return INCONCLUSIVE
  small = abs(n["change"]) <= 0.1 * n["scale"]
  if small and n["change_stderr"] <= 0.1 * n["scale"]:
    return HELD
  if not small and abs(n["change"]) > 2 * n["change_stderr"]:
    return NOT_HELD
  return INCONCLUSIVE


def _balance(n: Numbers) -> str:
  if not _finite(n, "ratio"):
    return INCONCLUSIVE
  if 0.5 <= n["ratio"] <= 2.0:
    return HELD
  if n["ratio"] < 0.25 or n["ratio"] > 4.0:
    return NOT_HELD
  return INCONCLUSIVE


def _step_scales(n: Numbers) -> list[str]:
  return [k[len("change_"):] for k in n if k.startswith("change_") and k != "change_1"]


def _smaller_step_lowers_loss(n: Numbers) -> str:
  """`change_<c>`, `stderr_<c>` for scales c < 1, and `change_1`."""
  scales = _step_scales(n)
  if not scales or not _finite(n, "change_1") or opposed(n):
    return INCONCLUSIVE
  if any(n[f"change_{c}"] + 2 * n[f"stderr_{c}"] < 0 and n[f"change_{c}"] < n["change_1"]
         for c in scales):
    return HELD
  if all(n[f"change_{c}"] - 2 * n[f"stderr_{c}"] > 0 for c in scales):
    return NOT_HELD
  return INCONCLUSIVE


def _measure_matches_null(n: Numbers) -> str:
  """Claim 13 against the statistic's own null: the last pair of windows' separation
  over that of interleaved halves of the last window."""
  if not _finite(n, "separation_last", "separation_null", "travel_ratio"):
    return INCONCLUSIVE
  excess = n["separation_last"] - n["separation_null"]
  if excess <= MEASURE_EXCESS_HELD and n["travel_ratio"] >= 0.5:
    return HELD
  if excess >= MEASURE_EXCESS_NOT_HELD:
    return NOT_HELD
  return INCONCLUSIVE


def _measure_stops_spreading(n: Numbers) -> str:
  """Claim 13 by equivalence, pooled over the seeds: the growth of the separation between
  windows from lag 2 to lag 5 within `MEASURE_GROWTH_MARGIN`, while the weights keep
  travelling (the last pair's travel at least half the first's)."""
  if not _finite(n, "separation_growth", "separation_growth_stderr", "travel_ratio") \
      or opposed(n):
    return INCONCLUSIVE
  growth = equivalence(n["separation_growth"], n["separation_growth_stderr"],
                       MEASURE_GROWTH_MARGIN)
  if growth == NOT_HELD or n["travel_ratio"] < 0.5:
    return NOT_HELD
  return growth


def _measure_growth_interval(n: Numbers) -> str:
  return interval_text(n["separation_growth"], n["separation_growth_stderr"],
                       MEASURE_GROWTH_MARGIN, "Growth of the separation from lag 2 to lag 5")


def _time_average_margin(n: Numbers) -> float:
  return TIME_AVERAGE_MARGIN_FRACTION * n["fluctuation"]


def _time_average_equivalent(n: Numbers) -> str:
  """Claims 10-12 by equivalence: the time average's relative change over the last window
  within a fifth of one iterate's coefficient of variation."""
  if not _finite(n, "average_change", "average_change_stderr", "fluctuation") \
      or opposed(n):
    return INCONCLUSIVE
  return equivalence(n["average_change"], n["average_change_stderr"], _time_average_margin(n))


def _time_average_interval(n: Numbers) -> str:
  return interval_text(n["average_change"], n["average_change_stderr"],
                       _time_average_margin(n), "Relative change of the time average")


def _time_average_converges(n: Numbers) -> str:
  if not _finite(n, "fluctuation", "average_change", "time_average", "time_average_stderr"):
    return INCONCLUSIVE
  relative_stderr = n["time_average_stderr"] / abs(n["time_average"])
  change = abs(n["average_change"])
  if change <= 2 * relative_stderr and n["fluctuation"] >= 5 * change:
    return HELD
  if change > 4 * relative_stderr:
    return NOT_HELD
  return INCONCLUSIVE


_MEAN_PAIRS: Pairs = lambda n: [(f"mean_{i}", f"stderr_{i}")  # noqa: E731
                                 for i in range(sum(k.startswith("mean_") for k in n))]
_STEP_PAIRS: Pairs = lambda n: [(f"change_{c}", f"stderr_{c}")  # noqa: E731
                                for c in _step_scales(n)]
_POOLED_TEXT = (" Decided on the seeds' random-effects pool (DerSimonian-Laird: the "
                "seed-to-seed spread widens the interval); inconclusive if seeds decided "
                "alone point in opposite directions (`seeds_opposed`).")

RULES: dict[str, Rule] = {
    "loss_equivalent_gradient_not_vanishing": Rule(
        "held if the 90% interval of the full loss's change from the first to the last "
        "plateau window (`loss_change`) lies inside +-5% of the progress already made "
        "(`loss_initial` - `loss_window_first`: the second half lowered the loss by less "
        "than a twentieth of what the first did) and the gradient norm's last window is at "
        "least half its first and 3 standard errors clear of 0; not held if the interval "
        "lies outside the margin or the gradient norm fell below half; otherwise "
        "inconclusive." + _POOLED_TEXT,
        _loss_equivalent_gradient_not_vanishing,
        _pairs(("loss_change", "loss_change_stderr"),
               ("grad_norm_last", "grad_norm_last_stderr")), _loss_interval),
    "smaller_lr_larger": Rule(
        "held if the plateau means (mean_i, learning rates in decreasing order) strictly "
        "increase with every gap larger than twice the combined standard error; not held "
        "if any gap is below minus that margin; otherwise inconclusive." + _POOLED_TEXT,
        _ordered_decreasing_in_lr, _MEAN_PAIRS),
    "grows": Rule(
        "held if the late mean exceeds the early mean by more than twice the combined "
        "standard error; not held if it is lower by more than that; otherwise "
        "inconclusive." + _POOLED_TEXT, _grows,
        _pairs(("early", "early_stderr"), ("late", "late_stderr"))),
    "drops": Rule(
        "held if the mean after is below the mean before by more than twice the combined "
        "standard error; not held if above by more than that; otherwise inconclusive."
        + _POOLED_TEXT, _drops, _pairs(("before", "before_stderr"), ("after", "after_stderr"))),
    "vanishes": Rule(
        "held if the last gradient norm is at most 5% of the largest and the full loss at "
        "most 0.01; not held if it is at least 20% of the largest; otherwise inconclusive.",
        _vanishes),
    "smoother": Rule(
        "held if the last iterate's loss is at least 1.5x as rough as the moving average "
        "(mean |change between consecutive epochs| / mean value); not held below 1.0; "
        "otherwise inconclusive.", _smoother),
    "synthetic_regimes": Rule(
        "held if below 2/L the final gradient norm is at most 1e-6, and above 2/L the "
        "time-averaged gradient norm is at least 0.1 while the loss's per-iterate "
        "fluctuation is at least 10x the last relative change of its time average; "
        "otherwise not held.", _synthetic_regimes),
    "estimators_converge": Rule(
        "held if every quantity's estimate is within the tolerance of the reference, in "
        "90% of repeated draws, at some sample size up to the largest tried; otherwise "
        "not held.", _estimators_converge),
    "corrected_no_slower": Rule(
        "inconclusive if the plain ||grad f||^2 estimate from one minibatch is biased by "
        "less than the tolerance; otherwise held if the bias-corrected estimate reaches "
        "the tolerance at no more minibatches than the plain one, else not held.",
        _corrected_no_slower),
    "inside_ball": Rule(
        "held if the largest weight norm of the run is at most the ball's radius; "
        "otherwise not held.", _inside_ball),
    "step_change_vanishes": Rule(
        "held if the 90% interval of the mean one-step change of F over the plateau "
        "(`change_per_step`) lies inside +-10% of `scale`, the typical size of one step's "
        "change; not held if it lies outside; otherwise inconclusive." + _POOLED_TEXT,
        _step_change_vanishes, _pairs(("change_per_step", "change_per_step_stderr")),
        _step_change_interval),
    "balance": Rule(
        "held if the ratio of the time averages (right side / left side) is in [0.5, 2]; "
        "not held outside [0.25, 4]; otherwise inconclusive.", _balance),
    "smaller_step_lowers_loss": Rule(
        "held if for some step-size scale c < 1 the mean one-step change plus twice its "
        "standard error is below 0 and below the change at c = 1; not held if for every "
        "c < 1 the change minus twice its standard error is above 0; otherwise "
        "inconclusive." + _POOLED_TEXT, _smaller_step_lowers_loss, _STEP_PAIRS),
    "measure_stops_spreading": Rule(
        "held if the 90% interval of `separation_growth` (the mean separation of windows "
        "5 relaxation times apart minus that of windows 2 apart: 0 when every window "
        "samples one measure, positive while the measure still spreads or drifts) lies "
        "inside +-0.1 (a tenth of the way to disjoint) while the weights keep travelling "
        "(`travel_ratio` >= 0.5); not held if the interval lies outside or the travel "
        "fell below half; otherwise inconclusive. A seed gives no error for this "
        "statistic: the pool's is the seeds' spread, so a seed alone is inconclusive."
        + _POOLED_TEXT, _measure_stops_spreading,
        _pairs(("separation_growth", "separation_growth_stderr")), _measure_growth_interval),
    "time_average_equivalent": Rule(
        "held if the 90% interval of the time average's relative change over the last "
        "window (`average_change`) lies inside +-20% of the per-iterate fluctuation (the "
        "last window's coefficient of variation): the average stands still while single "
        "iterates do not; not held if it lies outside; otherwise inconclusive."
        + _POOLED_TEXT, _time_average_equivalent,
        _pairs(("average_change", "average_change_stderr")), _time_average_interval),
}

# The rules these replaced on 2026-12-03, each decided per seed and combined by
# `combine`; a report shows their verdicts beside the new ones.
LEGACY_RULES: dict[str, tuple[str, Rule]] = {
    "loss_equivalent_gradient_not_vanishing": ("loss_stable_gradient_not_vanishing", Rule(
        "inconclusive if the gradient norm's last-window mean is within 3 standard errors "
        "of 0; held if the full loss's first and last plateau window means differ by at "
        "most twice their combined standard error (no significant trend) and the gradient "
        "norm's last-window mean is at least half its first plateau window's; otherwise "
        "not held.", _loss_stable_gradient_not_vanishing)),
    "step_change_vanishes": ("gain_vanishes", Rule(
        "held if the study's one-step change of F at c = 1 (`change`) and its standard "
        "error are both at most 10% of `scale`; not held if the change is larger than that "
        "and than twice its standard error; otherwise inconclusive.", _gain_vanishes)),
    "measure_stops_spreading": ("measure_matches_null", Rule(
        "held if the last two windows' separation exceeds `separation_null`, the "
        "separation of two interleaved halves of the last window, by at most 0.1 while the "
        "travel between windows stays at least half of what it was; not held if it exceeds "
        "it by 0.3 or more; otherwise inconclusive. (Interleaving averages out the slow "
        "fluctuations that separate contiguous windows, so this null reads low.)",
        _measure_matches_null)),
    "time_average_equivalent": ("time_average_converges", Rule(
        "held if the time average's last relative change is within twice its relative "
        "batch-means standard error and the per-iterate fluctuation is at least 5x that "
        "change; not held if the change exceeds four relative standard errors; otherwise "
        "inconclusive.", _time_average_converges)),
}


def decide(rule: str, numbers: Numbers) -> str:
  """The verdict of `rule` on `numbers`."""
  return RULES[rule].decide(numbers)


def legacy_verdict(rule: str, per_seed: Sequence[Numbers]) -> tuple[str, str] | None:
  """(old rule's name, its combined verdict) for a rule that replaced one, else None."""
  if rule not in LEGACY_RULES:
    return None
  name, old = LEGACY_RULES[rule]
  return name, combine([old.decide(n) for n in per_seed])


COMBINE_TEXT = ("held if held on a majority of the seeds and not held on none; not held if "
                "not held on a majority and held on none; otherwise inconclusive.")


def combine(verdicts: Sequence[str]) -> str:
  """The claim's verdict from its seeds' verdicts (`COMBINE_TEXT`)."""
  held, not_held = verdicts.count(HELD), verdicts.count(NOT_HELD)
  if 2 * held > len(verdicts) and not not_held:
    return HELD
  if 2 * not_held > len(verdicts) and not held:
    return NOT_HELD
  return INCONCLUSIVE
