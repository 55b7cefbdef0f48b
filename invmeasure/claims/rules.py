"""How each claim's verdict follows from its measured numbers.

A rule is a pure function of the numbers the report prints next to it, so anyone can
check a verdict by hand, and the tests recompute every verdict from the report. The
thresholds are fixed here, before any run, and are the same in quick and full mode.
Verdicts: HELD, NOT_HELD, INCONCLUSIVE (the numbers cannot tell, e.g. the difference
is within the standard errors).

Every training run is repeated over several seeds: a rule decides each seed's numbers
(within a run, batch means over windows are the unit of its standard errors) and
`combine` turns the seeds' verdicts into the claim's (`COMBINE_TEXT`), so the seeds are
independent replicates.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
Numbers = Mapping[str, float]


class Rule(NamedTuple):
  text: str                         # the rule in one or two sentences, printed in the report
  decide: Callable[[Numbers], str]  # numbers -> verdict


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


def _ordered_decreasing_in_lr(n: Numbers) -> str:
  """`mean_i`, `stderr_i` for learning rates in decreasing order (i = 0, 1, ...)."""
  count = sum(1 for k in n if k.startswith("mean_"))
  means = [n[f"mean_{i}"] for i in range(count)]
  errors = [n[f"stderr_{i}"] for i in range(count)]
  if count < 2 or not all(map(math.isfinite, means + errors)):
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
  if not _finite(n, low, f"{low}_stderr", high, f"{high}_stderr"):
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


def _smaller_step_lowers_loss(n: Numbers) -> str:
  """`change_<c>`, `stderr_<c>` for scales c < 1, and `change_1`."""
  scales = [k[len("change_"):] for k in n if k.startswith("change_") and k != "change_1"]
  if not scales or not _finite(n, "change_1"):
    return INCONCLUSIVE
  if any(n[f"change_{c}"] + 2 * n[f"stderr_{c}"] < 0 and n[f"change_{c}"] < n["change_1"]
         for c in scales):
    return HELD
  if all(n[f"change_{c}"] - 2 * n[f"stderr_{c}"] > 0 for c in scales):
    return NOT_HELD
  return INCONCLUSIVE


def _measure_converges(n: Numbers) -> str:
  if not _finite(n, "separation_last", "travel_ratio"):
    return INCONCLUSIVE
  if n["separation_last"] <= 0.3 and n["travel_ratio"] >= 0.5:
    return HELD
  if n["separation_last"] >= 0.7:
    return NOT_HELD
  return INCONCLUSIVE


def _time_average_converges(n: Numbers) -> str:
  if not _finite(n, "fluctuation", "average_change", "time_average", "time_average_stderr"):
    return INCONCLUSIVE
  relative_stderr = n["time_average_stderr"] / abs(n["time_average"])
  if (n["average_change"] <= 2 * relative_stderr
      and n["fluctuation"] >= 5 * n["average_change"]):
    return HELD
  if n["average_change"] > 4 * relative_stderr:
    return NOT_HELD
  return INCONCLUSIVE


RULES: dict[str, Rule] = {
    "loss_stable_gradient_not_vanishing": Rule(
        "inconclusive if the gradient norm's last-window mean is within 3 standard errors "
        "of 0; held if the full loss's first and last plateau window means differ by at "
        "most twice their combined standard error (no significant trend) and the gradient "
        "norm's last-window mean is at least half its first plateau window's; otherwise "
        "not held.", _loss_stable_gradient_not_vanishing),
    "smaller_lr_larger": Rule(
        "held if the plateau means (mean_i, learning rates in decreasing order) strictly "
        "increase with every gap larger than twice the combined standard error; not held "
        "if any gap is below minus that margin; otherwise inconclusive.",
        _ordered_decreasing_in_lr),
    "grows": Rule(
        "held if the late mean exceeds the early mean by more than twice the combined "
        "standard error; not held if it is lower by more than that; otherwise "
        "inconclusive.", _grows),
    "drops": Rule(
        "held if the mean after is below the mean before by more than twice the combined "
        "standard error; not held if above by more than that; otherwise inconclusive.",
        _drops),
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
    "gain_vanishes": Rule(
        "held if the time-averaged one-step change of F and its standard error are both "
        "at most 10% of `scale`, the mean size of one step's change; not held if the "
        "change is larger than that and than twice its standard error; otherwise "
        "inconclusive.", _gain_vanishes),
    "balance": Rule(
        "held if the ratio of the time averages (right side / left side) is in [0.5, 2]; "
        "not held outside [0.25, 4]; otherwise inconclusive.", _balance),
    "smaller_step_lowers_loss": Rule(
        "held if for some step-size scale c < 1 the mean one-step change plus twice its "
        "standard error is below 0 and below the change at c = 1; not held if for every "
        "c < 1 the change minus twice its standard error is above 0; otherwise "
        "inconclusive.", _smaller_step_lowers_loss),
    "measure_converges": Rule(
        "held if the last two windows sample nearly one measure (`separation_last` <= "
        "0.3: sliced W1 at most 30% of its bound from the distance between their "
        "iterates) while the travel between windows stays at least half of what it was; "
        "not held if `separation_last` >= 0.7 (the measure still drifts); otherwise "
        "inconclusive.", _measure_converges),
    "time_average_converges": Rule(
        "held if the time average's last relative change is within twice its relative "
        "batch-means standard error and the per-iterate fluctuation (last window's "
        "coefficient of variation) is at least 5x that change; not held if the change "
        "exceeds four relative standard errors (a trend); otherwise inconclusive.",
        _time_average_converges),
}


def decide(rule: str, numbers: Numbers) -> str:
  """The verdict of `rule` on `numbers`."""
  return RULES[rule].decide(numbers)


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
