"""Whether a run sits in the regime of the paper's Figure 1, decided from its metric rows.

Three properties, each with its threshold fixed here before any run was looked at:
- the full training loss plateaus clearly above zero (the network does not interpolate):
  mean `full_loss` over the last half >= `LOSS_FLOOR`; where the rows carry a held-out
  loss (`heldout_loss`, the text twin), the model must not memorise its data either: the
  last half's mean `full_loss` within `HELDOUT_GAP` (relative) of its mean `heldout_loss`;
- the gradient of the objective F = f + lambda/2 ||x||^2 (f itself under AdamW's decoupled
  decay, which penalises no objective) does not vanish: the median of
  `objective_grad_norm`, and of the bias-corrected sqrt(max(grad_norm_sq_unbiased, 0)),
  over the last fifth is >= `GRADIENT_RATIO` times its median over the second epoch, and
  neither falls significantly over the last half (`trend_t` > -`TREND_T`: the slope of
  `BLOCKS` consecutive block means, in standard errors, is not below -2);
- the weights have equilibrated: the mean `weight_norm` of the last fifth differs from
  that of the fifth before it by at most `WEIGHT_DRIFT` (relative).
The relaxation time of the weight norm under SGD with momentum beta, step eta and weight
decay lambda is about (1 - beta) / (eta lambda) steps, and 1 / (eta lambda) under AdamW's
decoupled decay; `relaxation_times` says how many of them the run lasted.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

LOSS_FLOOR = 0.1
GRADIENT_RATIO = 0.3
TREND_T = 2.0
BLOCKS = 10
WEIGHT_DRIFT = 0.02
HELDOUT_GAP = 0.10

PROPERTIES = ("loss_plateaus_above_zero", "gradient_does_not_vanish", "weights_equilibrated")


def _column(rows: Sequence[Mapping[str, Any]], field: str, first: float, last: float,
            transform=None, of: str | None = None) -> np.ndarray:
  """`field` of the rows with first < step <= last (with `of`, that field of the rows
  that carry `field`, e.g. their steps)."""
  values = [row[of or field] for row in rows if field in row and first < row["step"] <= last]
  values = np.asarray(values, dtype=float)
  return transform(values) if transform is not None else values


def block_trend_t(steps: np.ndarray, values: np.ndarray, blocks: int = BLOCKS) -> float:
  """The least-squares slope of `blocks` consecutive block means against their mean step,
  divided by its standard error (negative: falling). Block means tame the correlation
  between consecutive rounds; NaN with fewer than 3 blocks' worth of rows."""
  if len(values) < max(3, blocks):
    return float("nan")
  parts = np.array_split(np.arange(len(values)), blocks)
  x = np.array([steps[p].mean() for p in parts])
  y = np.array([values[p].mean() for p in parts])
  x = x - x.mean()
  slope = float(x @ (y - y.mean()) / (x @ x))
  residual = y - y.mean() - slope * x
  stderr = float(np.sqrt(residual @ residual / (len(y) - 2) / (x @ x)))
  return slope / stderr if stderr > 0 else float("inf") * np.sign(slope)


def regime_numbers(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                   steps_per_epoch: int) -> dict[str, float]:
  """The numbers the three properties are decided on, from a run's rows and config."""
  steps = max(row["step"] for row in rows)
  unbiased = lambda v: np.sqrt(np.maximum(v, 0.0))  # noqa: E731
  numbers: dict[str, float] = {}
  numbers["loss_last_half"] = float(np.mean(_column(rows, "full_loss", steps / 2, steps)))
  heldout = _column(rows, "heldout_loss", steps / 2, steps)
  if heldout.size:
    numbers["heldout_loss_last_half"] = float(np.mean(heldout))
    numbers["heldout_gap"] = abs(numbers["loss_last_half"]
                                 / numbers["heldout_loss_last_half"] - 1)
  for name, field, transform in (("objective_grad_norm", "objective_grad_norm", None),
                                 ("grad_norm_unbiased", "grad_norm_sq_unbiased", unbiased)):
    second = _column(rows, field, steps_per_epoch, 2 * steps_per_epoch, transform)
    last = _column(rows, field, 0.8 * steps, steps, transform)
    numbers[f"{name}_epoch2"] = float(np.median(second)) if second.size else float("nan")
    numbers[f"{name}_last_fifth"] = float(np.median(last)) if last.size else float("nan")
    numbers[f"{name}_ratio"] = numbers[f"{name}_last_fifth"] / numbers[f"{name}_epoch2"]
    numbers[f"{name}_trend_t"] = block_trend_t(
        _column(rows, field, steps / 2, steps, of="step"),
        _column(rows, field, steps / 2, steps, transform))
  previous = _column(rows, "weight_norm", 0.6 * steps, 0.8 * steps)
  last = _column(rows, "weight_norm", 0.8 * steps, steps)
  numbers["weight_norm_previous_fifth"] = float(np.mean(previous))
  numbers["weight_norm_last_fifth"] = float(np.mean(last))
  numbers["weight_norm_drift"] = abs(numbers["weight_norm_last_fifth"]
                                     / numbers["weight_norm_previous_fifth"] - 1)
  numbers["relaxation_time_steps"] = optimizer_relaxation_time(config["optimizer"])
  numbers["relaxation_times"] = steps / numbers["relaxation_time_steps"]
  return numbers


def relaxation_time(learning_rate: float, momentum: float, weight_decay: float) -> float:
  """(1 - momentum) / (learning_rate * weight_decay) steps (inf without weight decay)."""
  if weight_decay <= 0:
    return float("inf")
  return (1 - momentum) / (learning_rate * weight_decay)


def optimizer_relaxation_time(optimizer: Mapping[str, Any]) -> float:
  """The weight norm's relaxation time of a config's optimizer: (1 - momentum) / (eta
  lambda) for SGD (L2 weight decay), 1 / (eta lambda) for decoupled decay (AdamW), which
  momentum does not slow; NaN for Adam with L2 decay (no such simple scale)."""
  decoupled = optimizer.get("name") == "adamw" or (
      optimizer.get("name") == "adam" and optimizer.get("decoupled_weight_decay", False))
  if optimizer.get("name") == "adam" and not decoupled and optimizer.get("weight_decay"):
    return float("nan")
  momentum = 0.0 if decoupled else optimizer.get("momentum", 0.0)
  return relaxation_time(optimizer["learning_rate"], momentum,
                         optimizer.get("weight_decay", 0.0))


def decide(numbers: Mapping[str, float]) -> dict[str, bool]:
  """Each property of `PROPERTIES`: held (True) or not, by the thresholds above."""
  gradient = all(numbers[f"{name}_ratio"] >= GRADIENT_RATIO
                 and numbers[f"{name}_trend_t"] > -TREND_T
                 for name in ("objective_grad_norm", "grad_norm_unbiased"))
  return {
      "loss_plateaus_above_zero": bool(numbers["loss_last_half"] >= LOSS_FLOOR
                                       and numbers.get("heldout_gap", 0.0) <= HELDOUT_GAP),
      "gradient_does_not_vanish": bool(gradient),
      "weights_equilibrated": numbers["weight_norm_drift"] <= WEIGHT_DRIFT,
  }


def steps_per_epoch(rows: Sequence[Mapping[str, Any]]) -> int:
  """The run's epoch length, read off a row's `step` / `epoch`."""
  row = next(r for r in rows if r.get("epoch"))
  return int(round(row["step"] / row["epoch"]))


TABLE_NUMBERS = (
    ("loss_last_half", "mean full_loss, last half"),
    ("heldout_loss_last_half", "mean heldout_loss, last half"),
    ("heldout_gap", "relative gap to the held-out loss"),
    ("objective_grad_norm_epoch2", "median objective_grad_norm, epoch 2"),
    ("objective_grad_norm_last_fifth", "median objective_grad_norm, last fifth"),
    ("objective_grad_norm_ratio", "ratio (last fifth / epoch 2)"),
    ("objective_grad_norm_trend_t", "trend over the last half (t of the slope)"),
    ("grad_norm_unbiased_epoch2", "median sqrt(max(grad_norm_sq_unbiased, 0)), epoch 2"),
    ("grad_norm_unbiased_last_fifth", "the same, last fifth"),
    ("grad_norm_unbiased_ratio", "ratio (last fifth / epoch 2)"),
    ("grad_norm_unbiased_trend_t", "trend over the last half (t of the slope)"),
    ("weight_norm_previous_fifth", "mean weight_norm, fourth fifth"),
    ("weight_norm_last_fifth", "mean weight_norm, last fifth"),
    ("weight_norm_drift", "relative change"),
    ("relaxation_time_steps", "relaxation time (1 - beta) / (eta lambda), steps (AdamW: 1 / (eta lambda))"),
    ("relaxation_times", "run length in relaxation times"),
)


def table(names: Sequence[str], numbers: Sequence[Mapping[str, float]]) -> str:
  """A markdown table: a row per number and per property, a column per run."""
  lines = ["| | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
  for key, label in TABLE_NUMBERS:
    if not any(key in n for n in numbers):
      continue  # e.g. held-out numbers of runs without held-out data
    lines.append(f"| {label} (`{key}`) | "
                 + " | ".join(f"{n[key]:.4g}" if key in n else "-" for n in numbers) + " |")
  verdicts = [decide(n) for n in numbers]
  for prop in PROPERTIES:
    lines.append(f"| **{prop.replace('_', ' ')}** | "
                 + " | ".join("held" if v[prop] else "**not held**" for v in verdicts) + " |")
  return "\n".join(lines)
