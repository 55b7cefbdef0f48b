"""The numbers behind each claim, measured from the suite's runs and fixed-weight studies.

One function per claim (or group of claims); each reads what it needs and returns
`report.Claim`s, whose verdicts `rules.py` computes from exactly the numbers returned.
Plateau statistics use the second half of a run: the windowed means and batch-means
standard errors of `invmeasure.analysis.invariant`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from invmeasure.analysis import invariant, invariant_figures, regime, runs
from invmeasure.claims import rules
from invmeasure.claims.report import Claim, make_claim
from invmeasure.studies import estimators as estimators_lib, restore, step_size as step_size_lib
from invmeasure.studies import figures as study_figures
from invmeasure.training import metric_writer, projections

NUM_WINDOWS = 5   # windows of a plateau: enough for a batch-means standard error
PLATEAU = 0.5     # the plateau is the run's second half
DIAGNOSTIC_FIELD = "grad_norm"  # rows that carry it are diagnostic rows


def _diagnostic_series(run: runs.Run, field: str) -> tuple[np.ndarray, np.ndarray]:
  return runs.series(run, field, x="step", require=DIAGNOSTIC_FIELD)


def _segment(run: runs.Run, field: str, start: float, stop: float) -> tuple[float, float]:
  """Mean and batch-means standard error of `field` on rows with step in
  [start, stop] x (last step); NaN stderr when too few rows for windows."""
  steps, values = _diagnostic_series(run, field)
  last = steps[-1]
  keep = (steps >= start * last) & (steps <= stop * last)
  steps, values = steps[keep], values[keep]
  if len(values) < 2 * NUM_WINDOWS:
    return float(np.mean(values)) if len(values) else float("nan"), float("nan")
  windows = invariant.fluctuation_and_averages(steps, values, NUM_WINDOWS)
  return float(np.mean(windows.window_means)), windows.birkhoff_stderr


def _figure(workdirs: dict[str, str], report_dir: str, name: str) -> str:
  return os.path.relpath(os.path.join(workdirs[name], "figures", "training_dynamics.png"),
                         report_dir)


def _window_stderrs(steps: np.ndarray, values: np.ndarray,
                    windows: invariant.Fluctuation) -> np.ndarray:
  """Each window's batch-means standard error of its mean (`invariant.batch_means_stderr`:
  contiguous batches allow for the correlation between nearby rounds)."""
  return np.asarray([invariant.batch_means_stderr(values[(steps >= a) & (steps <= b)])
                     for a, b in zip(windows.window_starts, windows.window_ends)])


def loss_stable_gradient_not_vanishing(run: runs.Run, figure: str, arm: str = "",
                                       key: str = "fig1_loss_stable_gradient_not_vanishing"
                                       ) -> Claim:
  """Figure 1 (or 3, for the text arm): the loss settles while the full gradient norm
  stays away from 0."""
  steps, loss = _diagnostic_series(run, "full_loss")
  loss_windows = invariant.fluctuation_and_averages(steps, loss, NUM_WINDOWS, PLATEAU)
  loss_stderr = _window_stderrs(steps, loss, loss_windows)
  steps, grad = _diagnostic_series(run, "grad_norm")
  grad_windows = invariant.fluctuation_and_averages(steps, grad, NUM_WINDOWS, PLATEAU)
  grad_stderr = _window_stderrs(steps, grad, grad_windows)
  last_size = np.sum((steps >= grad_windows.window_starts[-1])
                     & (steps <= grad_windows.window_ends[-1]))
  means = loss_windows.window_means
  _, objective = _diagnostic_series(run, "objective_grad_norm")
  numbers = {
      "loss_initial": loss[0],
      "loss_window_first": means[0], "loss_window_last": means[-1],
      "loss_change": means[-1] - means[0],
      "loss_change_stderr": float(np.hypot(loss_stderr[0], loss_stderr[-1])),
      "loss_margin": rules.LOSS_MARGIN_FRACTION * (loss[0] - means[0]),
      # The replaced rule's standard errors: a window's std over sqrt(rows).
      "loss_window_first_stderr": loss_windows.window_stds[0] / np.sqrt(last_size),
      "loss_window_last_stderr": loss_windows.window_stds[-1] / np.sqrt(last_size),
      "grad_norm_initial": grad[0],
      "grad_norm_window_first": grad_windows.window_means[0],
      "grad_norm_last": grad_windows.window_means[-1],
      "grad_norm_last_stderr": grad_stderr[-1],
      "grad_norm_ratio": grad_windows.window_means[-1] / grad_windows.window_means[0],
      "objective_grad_norm_last": objective[-1],
  }
  return make_claim(
      key,
      f"The training loss stabilises while the full gradient norm does not go to zero "
      f"({arm or 'Figure 1'}).",
      f"run `{run.name}` (constant learning rate); {NUM_WINDOWS} equal windows of its "
      "second half; full-batch loss and gradient norm from the diagnostic rounds; "
      "`loss_change` = last window's mean - first's, its standard error from each window's "
      "batch means (5 contiguous batches); `loss_margin` = 5% of `loss_initial` - "
      "`loss_window_first`.",
      "loss_equivalent_gradient_not_vanishing", numbers, [figure])


def smaller_lr_larger(constant_runs: Sequence[runs.Run], figure: str,
                      fields: Sequence[str] = ("grad_norm", "noise_norm", "sharpness"),
                      arm: str = "Figure 2", key_prefix: str = "fig2_") -> list[Claim]:
  """Figure 2: a smaller learning rate settles where gradient norm, noise and sharpness
  are larger; runs in decreasing learning rate, plateau = last quarter."""
  claims = []
  lrs = [float(r.config["optimizer"]["learning_rate"]) for r in constant_runs]
  what = {"grad_norm": "gradient norm", "noise_norm": "gradient noise",
          "sharpness": "sharpness"}
  for field in fields:
    numbers = {}
    for i, run in enumerate(constant_runs):
      numbers[f"mean_{i}"], numbers[f"stderr_{i}"] = _segment(run, field, 0.75, 1.0)
    numbers.update({f"lr_{i}": lr for i, lr in enumerate(lrs)})
    claims.append(make_claim(
        f"{key_prefix}smaller_lr_larger_{field}",
        f"A smaller learning rate settles where the {what[field]} is larger ({arm}).",
        "runs " + ", ".join(f"`{r.name}`" for r in constant_runs) + " (learning rates "
        f"{', '.join(f'{lr:g}' for lr in lrs)}: `lr_i`); `mean_i`, `stderr_i`: mean of "
        f"`{field}` over each run's last quarter and its batch-means standard error.",
        "smaller_lr_larger", numbers, [figure]))
  return claims


def cosine_ends_lower(constant: runs.Run, cosine: runs.Run, figure: str, arm: str) -> Claim:
  """Figure 3: the cosine schedule ends at a lower loss than the constant rate."""
  # The last fifth: enough rounds (12 at one every 100 steps) for batch-means errors.
  before, before_se = _segment(constant, "full_loss", 0.8, 1.0)
  after, after_se = _segment(cosine, "full_loss", 0.8, 1.0)
  return make_claim(
      "fig3_text_cosine_ends_lower",
      f"A cosine schedule ends at a lower loss than the constant rate ({arm}).",
      f"runs `{constant.name}` (constant, `before`) and `{cosine.name}` (the same rate "
      "decayed to 0 by a cosine, `after`): `full_loss` over each run's last fifth, with "
      "batch-means standard errors.",
      "drops", {"before": before, "before_stderr": before_se, "after": after,
                "after_stderr": after_se}, [figure])


def noise_grows(run: runs.Run, figure: str) -> Claim:
  early, early_se = _segment(run, "noise_norm", 0.0, 0.1)
  late, late_se = _segment(run, "noise_norm", 0.75, 1.0)
  return make_claim(
      "fig2_noise_grows", "The gradient noise grows during training (Figure 2).",
      f"run `{run.name}`: `noise_norm` over the first tenth of the run (`early`) and the "
      "last quarter (`late`), with batch-means standard errors.",
      "grows", {"early": early, "early_stderr": early_se, "late": late,
                "late_stderr": late_se}, [figure])


def lr_decay_lowers_loss(run: runs.Run, figure: str) -> Claim:
  boundary = runs.lr_change_epochs(run, x="step")
  steps, _ = _diagnostic_series(run, "full_loss")
  half = (boundary[0] if boundary else steps[-1] / 2) / steps[-1]
  before, before_se = _segment(run, "full_loss", 0.5 * half, half)
  after, after_se = _segment(run, "full_loss", half + 0.5 * (1 - half), 1.0)
  return make_claim(
      "fig1_lr_decay_lowers_loss",
      "Dividing the learning rate at a plateau lowers the training loss (Figure 1).",
      f"run `{run.name}` (step schedule): full loss over the second half of the stretch "
      "before the decay (`before`) and of the stretch after it (`after`).",
      "drops", {"before": before, "before_stderr": before_se, "after": after,
                "after_stderr": after_se, "decay_step": half * steps[-1]}, [figure])


def overfit_gradient_vanishes(run: runs.Run, figure: str) -> Claim:
  _, grad = _diagnostic_series(run, "grad_norm")
  _, loss = _diagnostic_series(run, "full_loss")
  return make_claim(
      "fig6_overfit_gradient_vanishes",
      "On a task the network fits exactly, the gradient norm does go to zero (Figure 6).",
      f"run `{run.name}`: {run.config.get('train_examples')} training examples, no weight "
      "decay; last and largest full gradient norm, last full loss.",
      "vanishes", {"grad_norm_last": grad[-1], "grad_norm_max": grad.max(),
                   "full_loss_last": loss[-1], "train_examples": run.config["train_examples"]},
      [figure])


def _roughness(values: np.ndarray) -> float:
  return float(np.mean(np.abs(np.diff(values))) / np.mean(np.abs(values)))


def moving_average_smoother(run: runs.Run, figure: str) -> Claim:
  """Figure 5: the epoch's moving-average loss (eq. 2) vs f at its last iterate (eq. 3)."""
  _, average = runs.series(run, "epoch_avg_train_loss", x="step", require="full_loss")
  steps, last = runs.series(run, "full_loss", x="step", require="epoch_avg_train_loss")
  keep = steps >= PLATEAU * steps[-1]
  rough_last, rough_average = _roughness(last[keep]), _roughness(average[keep])
  return make_claim(
      "fig5_moving_average_smoother",
      "The moving average of the minibatch losses is smoother than the loss of the last "
      "iterate (Figure 5).",
      f"run `{run.name}`, epoch ends of the second half: roughness = mean |change between "
      "consecutive epochs| / mean value.",
      "smoother", {"last_iterate_roughness": rough_last,
                   "moving_average_roughness": rough_average,
                   "roughness_ratio": rough_last / rough_average,
                   "epochs": int(keep.sum())}, [figure])


def synthetic_regimes(rows: list[dict], figure: str) -> Claim:
  """Figure 4 on the suite's 1-D example (configs/synthetic_1d.py)."""
  lrs = sorted({r["lr"] for r in rows})
  below = [r for r in rows if r["lr"] == lrs[0]]
  above = [r for r in rows if r["lr"] == lrs[-1]]
  half = above[len(above) // 2:]
  loss = np.asarray([r["loss"] for r in half])
  averages = invariant.birkhoff_averages(np.asarray([r["loss"] for r in above]))
  quarter = len(averages) * 3 // 4
  return make_claim(
      "fig4_synthetic_regimes",
      "On a 1-D function with L = 1, gradient descent converges for eta < 2/L and, for "
      "eta > 2/L, oscillates with a nonzero time-averaged gradient norm (Figure 4).",
      f"gradient descent at eta = {lrs[0]:g} and {lrs[-1]:g}; second half of the "
      "second run: time-averaged gradient norm, the loss's coefficient of variation, and "
      "the relative change of the loss's time average over the last quarter.",
      "synthetic_regimes",
      {"below_lr": lrs[0], "below_final_grad_norm": below[-1]["grad_norm"],
       "above_lr": lrs[-1],
       "above_grad_norm_time_avg": float(np.mean([r["grad_norm"] for r in half])),
       "above_loss_fluctuation": float(loss.std() / abs(loss.mean())),
       "above_loss_time_avg_change": abs(averages[-1] - averages[quarter]) / abs(averages[-1])},
      [figure])


def time_average_converges(run: runs.Run, figure: str) -> list[Claim]:
  claims = []
  for field in ("full_loss", "grad_norm", "sharpness"):
    steps, values = _diagnostic_series(run, field)
    result = invariant.fluctuation_and_averages(steps, values, NUM_WINDOWS, PLATEAU)
    stderrs = _window_stderrs(steps, values, result)
    # A_W - A_{W-1} = (m_W - A_{W-1}) / W over equal windows; A_{W-1} is the mean of the
    # first W - 1 window means, whose errors are independent to a good approximation.
    previous = result.birkhoff_at_ends[-2]
    change_stderr = (np.sqrt(stderrs[-1] ** 2 + np.sum(stderrs[:-1] ** 2)
                             / (NUM_WINDOWS - 1) ** 2) / NUM_WINDOWS / abs(previous))
    claims.append(make_claim(
        f"birkhoff_{field}",
        f"Per-iterate `{field}` keeps fluctuating while its time (Birkhoff) average "
        "converges (Theorems 4.3, 4.4).",
        f"run `{run.name}`, second half in {NUM_WINDOWS} windows: the last window's "
        "coefficient of variation (`fluctuation`) and the relative change of the time "
        "average over the last window (`average_change`, signed; its standard error from "
        "each window's batch means).",
        "time_average_equivalent",
        {"fluctuation": result.fluctuation, "average_change": result.relative_changes[-1],
         "average_change_stderr": float(change_stderr),
         "time_average": result.birkhoff_at_ends[-1],
         "time_average_stderr": result.birkhoff_stderr}, [figure]))
  return claims


# Claim 13's windows: one relaxation time each, the run's last six (steps 8,010-20,010 of
# the measure run). Lags 2 and 5 are compared (`rules.MEASURE_GROWTH_MARGIN`).
MEASURE_WINDOW_RELAXATIONS = 1
MEASURE_WINDOWS = 6
MEASURE_REFERENCE_LAG = 2


def measure_converges(workdir: str, name: str, figure_path: str, rel,
                      config: dict | None = None) -> Claim:
  """The invariant-measure picture on the run's weight projections: the last
  `MEASURE_WINDOWS` windows of one relaxation time each; how the separation between two
  windows grows with the time between them (flat once they sample one measure)."""
  rows = metric_writer.read_metrics(os.path.join(workdir, projections.PROJECTIONS_FILE))
  steps = np.asarray([r["step"] for r in rows], float)
  samples = np.asarray([r["weights"] for r in rows], float)
  config = config or runs.load_run(workdir).config
  relaxation = regime.optimizer_relaxation_time(config["optimizer"])
  span = MEASURE_WINDOWS * MEASURE_WINDOW_RELAXATIONS * relaxation
  start = max(0.0, 1 - span / steps[-1]) if np.isfinite(span) else PLATEAU
  result = invariant.compare_windows(steps, samples, MEASURE_WINDOWS, start)
  windows = [samples[(steps >= lo) & (steps <= hi)]
             for lo, hi in zip(result.window_starts, result.window_ends)]
  by_lag = invariant.separation_by_lag(windows)
  last = windows[-1]
  tau = invariant.autocorrelation_time(last)
  block = min(max(1, int(np.ceil(2 * tau))), len(last) // 4)
  figure = rel(invariant_figures.plot_window_distances(result, figure_path))
  far = len(by_lag)
  return make_claim(
      "measure_converges_weights_move",
      "The distribution of the weights converges while the weights keep moving "
      "(the invariant-measure picture).",
      f"run `{name}`: projections of the weights on {samples.shape[1]} fixed random "
      f"directions every {int(steps[1] - steps[0])} steps; its last {MEASURE_WINDOWS} "
      f"windows of {MEASURE_WINDOW_RELAXATIONS} relaxation time ({relaxation:g} steps) each; "
      "`separation_lag_<l>`: sliced W1 between the empirical measures of windows l apart "
      "over the mean distance between their iterates (~0 one measure, ~1 disjoint), "
      f"averaged over every such pair; `separation_growth` = lag {far} - lag "
      f"{MEASURE_REFERENCE_LAG}; `travel_ratio`: the last consecutive pair's mean "
      "distance over the first's. For the replaced rule: `separation_last` (the last "
      "consecutive pair) and `separation_null` (interleaved halves of the last window in "
      "blocks of `block_rows`, twice the autocorrelation time `autocorrelation_rows`).",
      "measure_stops_spreading",
      {**{f"separation_lag_{lag}": value for lag, value in enumerate(by_lag, 1)},
       "separation_growth": by_lag[-1] - by_lag[MEASURE_REFERENCE_LAG - 1],
       "travel_ratio": result.travel_mean[-1] / result.travel_mean[0],
       "travel_last": result.travel_mean[-1], "window_rows": result.window_size,
       "separation_last": result.separation[-1],
       "separation_null": invariant.interleaved_separation(last, block),
       "autocorrelation_rows": tau, "block_rows": block},
      [figure])


def inside_ball(run: runs.Run, figure_path: str, rel) -> Claim:
  """Theorem 4.3 on a plain-SGD run."""
  optimizer = run.config["optimizer"]
  steps, norms = _diagnostic_series(run, "weight_norm")
  _, grads = _diagnostic_series(run, "minibatch_grad_norm")
  lr, decay = float(optimizer["learning_rate"]), float(optimizer["weight_decay"])
  radius = invariant.weight_ball_radius(norms[0], grads.max(), decay, lr)
  figure = rel(invariant_figures.plot_weight_ball(steps, norms, radius, figure_path))
  return make_claim(
      "thm43_inside_ball",
      "With weight decay and a small enough step, SGD's iterates stay in a ball "
      "(Theorem 4.3).",
      f"run `{run.name}` (SGD without momentum): radius max(||x_0||, G / lambda), G the "
      "largest minibatch gradient norm observed in the diagnostic rounds.",
      "inside_ball", {"max_weight_norm": norms.max(), "radius": radius,
                      "initial_weight_norm": norms[0], "max_minibatch_grad_norm": grads.max(),
                      "weight_decay": decay, "learning_rate": lr}, [figure])


def balance(run: runs.Run, figure_path: str, rel) -> Claim:
  """Equation (10) over the run's plateau, in the update's terms."""
  optimizer = run.config["optimizer"]
  result = invariant.equation10(run.rows, float(optimizer["weight_decay"]),
                                momentum=float(optimizer.get("momentum", 0.0)),
                                start_fraction=PLATEAU,
                                sharpness_field="update_sharpness_independent")
  figure = rel(invariant_figures.plot_equation10(result, figure_path))
  return make_claim(
      f"eq10_balance_{run.name}",
      "At the invariant measure, E -<grad F, u> balances E (1/2)(s_u + lambda) ‖u‖² "
      f"(equation (10), u the optimizer's step, s_u the sharpness along it): run "
      f"`{run.name}`.",
      f"run `{run.name}`, diagnostic rows of the second half (s_u from a minibatch other "
      "than the update's, so unbiased for the full Hessian): time averages of both sides "
      "(`lhs_mean`, `rhs_mean`) and `ratio` = rhs/lhs; the paper's SGD form "
      "||grad f||^2 vs (eta_eff/2) s_u ||g_B||^2 as `paper_ratio` (bias-corrected "
      "||grad f||^2: `paper_ratio_unbiased`).",
      "balance", {"ratio": result.update.ratio, "lhs_mean": result.update.lhs_mean,
                  "rhs_mean": result.update.rhs_mean, "paper_ratio": result.paper.ratio,
                  "paper_ratio_unbiased": result.paper.ratio_unbiased,
                  "rows": len(result.update.steps)}, [figure])


def _plateau_checkpoints(workdir: str) -> list[int]:
  """Checkpoint steps of the run's second half without the final one (it ends an
  epoch; `suite.training_configs` says why that matters)."""
  steps = restore.checkpoint_steps(workdir)
  return [s for s in steps[:-1] if s >= PLATEAU * steps[-1]]


def _spread(steps: list[int], count: int) -> list[int]:
  """Up to `count` of `steps`, evenly spread."""
  picks = np.unique(np.linspace(0, len(steps) - 1, min(count, len(steps))).round())
  return [steps[int(i)] for i in picks]


def _sufficient(n: int | None) -> float:
  return float("inf") if n is None else float(n)


def estimators(workdir: str, suite, figure_path: str, rel) -> list[Claim]:
  """Appendix A.2 (Figures 7 and 8) at the run's last checkpoint."""
  plan, state = restore.load_run_state(workdir, _plateau_checkpoints(workdir)[-1])
  study = estimators_lib.estimator_convergence(
      plan, state, suite.estimator_sample_sizes, suite.estimator_repeats, seed=0)
  figure = rel(study_figures.estimator_figure(study, figure_path))
  best = {name: q.corrected_sufficient_n if q.corrected is not None else q.plain_sufficient_n
          for name, q in study.quantities.items()}
  where = (f"run `{os.path.basename(workdir)}` at step {study.step}, {study.num_repeats} "
           f"repeated draws of n = {', '.join(map(str, study.sample_sizes))} minibatches of "
           f"{study.batch_size}; reference: {study.reference_note}; tolerance "
           f"{study.tolerance:g} (relative) in {study.coverage:.0%} of draws")
  converge = make_claim(
      "a2_estimators_converge",
      "Loss, gradient norm, noise and sharpness estimated from random minibatches converge "
      "to their full-data values as the number of minibatches grows (Appendix A.2).",
      where + "; `sample_size_<q>`: the smallest n within tolerance (bias-corrected "
      "where there is a correction; inf: none up to `largest`).",
      "estimators_converge",
      {**{f"sample_size_{name}": _sufficient(n) for name, n in best.items()},
       "largest": float(max(study.sample_sizes))}, [figure])
  grad = study.quantities["grad_norm_sq"]
  corrected = make_claim(
      "a2_bias_correction",
      "‖mean of n minibatch gradients‖² overestimates ‖grad f‖² by about noise/n "
      "(Jensen); subtracting the estimated noise removes the bias (Appendix A.2).",
      where + "; `plain_bias_at_1`: mean plain estimate from one minibatch over the "
      "reference, minus 1.",
      "corrected_no_slower",
      {"plain_bias_at_1": grad.plain_mean[0] / grad.reference - 1,
       "plain_sample_size": _sufficient(grad.plain_sufficient_n),
       "corrected_sample_size": _sufficient(grad.corrected_sufficient_n),
       "tolerance": study.tolerance, "reference": grad.reference}, [figure])
  return [converge, corrected]


def _telescoped_step_change(run: runs.Run) -> tuple[float, float, float]:
  """The plateau's mean one-step change of F = f + lambda/2 ||x||^2: the change between
  the first and last plateau windows' means over the steps between their centres (the
  sum of one-step changes telescopes), with its batch-means standard error."""
  decay = float(run.config["optimizer"].get("weight_decay", 0.0))
  steps, loss = _diagnostic_series(run, "full_loss")
  _, norm = _diagnostic_series(run, "weight_norm")
  objective = loss + decay / 2 * norm ** 2
  windows = invariant.fluctuation_and_averages(steps, objective, NUM_WINDOWS, PLATEAU)
  stderrs = _window_stderrs(steps, objective, windows)
  centres = (windows.window_starts + windows.window_ends) / 2
  span = float(centres[-1] - centres[0])
  change = (windows.window_means[-1] - windows.window_means[0]) / span
  return float(change), float(np.hypot(stderrs[0], stderrs[-1]) / span), span


def step_sizes(workdir: str, run: runs.Run, suite, figure_path: str, rel) -> list[Claim]:
  """Theorem 5.2 and the exact one-step change of Theorem 4.3, at plateau checkpoints."""
  steps = _spread(_plateau_checkpoints(workdir), suite.step_size_states)
  plan, states = restore.load_run_states(workdir, steps)
  study = step_size_lib.step_size_study(plan, states, num_minibatches=suite.step_size_minibatches)
  figure = rel(study_figures.step_size_figure(study, figure_path))
  scales = [float(c) for c in study.scales]
  one = scales.index(1.0)
  where = (f"run `{run.name}`, {len(steps)} checkpoints of its second half (steps "
           f"{', '.join(map(str, steps))}) x {study.num_minibatches} minibatches: the "
           "full-data change of F = f + lambda/2 ||x||^2 after one optimizer step scaled by "
           f"c; standard errors over {study.stderr_unit}")
  change, change_stderr, span = _telescoped_step_change(run)
  gain = make_claim(
      "thm43_one_step_change_vanishes",
      "Averaged over the iterates, the expected one-step change of the loss goes to zero "
      "(Theorems 4.3, 4.4).",
      f"run `{run.name}`: `change_per_step`, the mean one-step change of F over its plateau, "
      "telescoped: (F at the last plateau window - F at the first) / the steps between "
      f"their centres ({span:g}), F = `full_loss` + lambda/2 `weight_norm`^2 of the "
      "diagnostic rows, its standard error from each window's batch means; against "
      "`scale`, the typical size |F(x + u) - F(x)| of one step's change, from the study: "
      + where + "; the study's own estimate at c = 1: `change`, `change_stderr`; "
      "`descent`: the mean first-order term -<grad F, u>.",
      "step_change_vanishes",
      {"change_per_step": change, "change_per_step_stderr": change_stderr,
       "scale": float(np.mean(np.abs(study.objective_change[..., one]))),
       "change": study.mean_objective_change[one],
       "change_stderr": study.stderr_objective_change[one],
       "descent": float(np.mean(study.descent))}, [figure])
  numbers = {"change_1": study.mean_objective_change[one]}
  for i, c in enumerate(scales):
    if 0 < c < 1:
      numbers[f"change_{c:g}"] = study.mean_objective_change[i]
      numbers[f"stderr_{c:g}"] = study.stderr_objective_change[i]
  smaller = make_claim(
      "thm52_smaller_step_lowers_loss",
      "At an invariant measure not supported on stationary points, a smaller step size "
      "lowers the expected loss after one step (Theorem 5.2).",
      where + "; `change_<c>`, `stderr_<c>` for each scale c.",
      "smaller_step_lowers_loss", numbers, [figure])
  return [gain, smaller]
