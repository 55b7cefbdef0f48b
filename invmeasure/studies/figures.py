"""Figures of the studies at fixed weights (`invmeasure.studies`).

- `estimator_figure` (the paper's Figures 7 and 8): each quantity's estimate from n
  minibatches against n, plain and bias-corrected, with bands over the repeats and the
  reference value.
- `step_size_figure` (Theorem 5.2): the expected one-step change of F and f against the
  step-size scale c, with standard errors and the zero line.

Built with matplotlib's object API on its Agg canvas, so pyplot and its backend are left
alone.
"""

from __future__ import annotations


import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from invmeasure.studies.estimators import EstimatorStudy, QuantityConvergence
from invmeasure.studies.step_size import StepSizeStudy
from invmeasure.training import storage

_DPI = 110
_TITLES = {
    "loss": ("full loss $f$", "loss"),
    "grad_norm_sq": (r"squared gradient norm $\|\nabla f\|^2$", "squared norm"),
    "noise_sq": (r"noise $E\|g_B - \nabla f\|^2$", "squared norm"),
    "sharpness": (r"sharpness $\lambda_{\max}(\nabla^2 f)$", "eigenvalue"),
}


def _band(ax: Axes, sizes: np.ndarray, mean: np.ndarray, low: np.ndarray, high: np.ndarray,
          color: str, label: str, linestyle: str, marker: str) -> None:
  made = ~np.isnan(mean)
  if not made.any():
    return
  ax.plot(sizes[made], mean[made], color=color, linestyle=linestyle, marker=marker,
          markersize=4, label=label)
  ax.fill_between(sizes[made], low[made], high[made], color=color, alpha=0.2, linewidth=0)


def _draw_quantity(ax: Axes, q: QuantityConvergence, study: EstimatorStudy) -> None:
  title, ylabel = _TITLES.get(q.name, (q.name, "value"))
  low_q, high_q = study.quantiles
  spread = f"{low_q:.0%}-{high_q:.0%} of repeats"
  _band(ax, q.sample_sizes, q.plain_mean, q.plain_low, q.plain_high, "tab:blue",
        f"plain, mean and {spread}", "-", "o")
  if q.corrected is not None:
    _band(ax, q.sample_sizes, q.corrected_mean, q.corrected_low, q.corrected_high,
          "tab:orange", f"bias-corrected, mean and {spread}", "--", "s")
  ax.axhline(q.reference, color="black", linewidth=1.2,
             label=f"reference ({study.reference_kind}) = {q.reference:.4g}")
  tol = study.tolerance * abs(q.reference)
  ax.axhspan(q.reference - tol, q.reference + tol, color="0.85", zorder=0,
             label=f"reference $\\pm$ {study.tolerance:.0%}")
  found = [f"{kind}: n={n}" for kind, n in (("plain", q.plain_sufficient_n),
                                            ("corrected", q.corrected_sufficient_n))
           if n is not None]
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_formatter(ScalarFormatter())  # n as 1, 2, 4, ... not 2^k
  ax.set_xlabel("minibatches n")
  ax.set_ylabel(ylabel)
  ax.set_title(title + ("\nsufficient from " + ", ".join(found) if found else ""),
               fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)


def estimator_figure(study: EstimatorStudy, path: str) -> str:
  """Draws one panel per quantity of `study` (estimate against n on a log axis) to a PNG
  at `path` (its directory created if missing); returns `path`."""
  names = [name for name in ("loss", "grad_norm_sq", "noise_sq", "sharpness")
           if name in study.quantities]
  names += [name for name in study.quantities if name not in names]
  cols = min(2, len(names))
  rows = -(-len(names) // cols)
  fig = Figure(figsize=(6.0 * cols, 4.2 * rows + 0.6))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, name in zip(axes.ravel(), names):
    _draw_quantity(ax, study.quantities[name], study)
  for ax in axes.ravel()[len(names):]:
    ax.set_visible(False)
  fig.suptitle(f"Estimates from n minibatches of {study.batch_size} at step {study.step} "
               f"({study.num_repeats} repeats; sufficient: {study.coverage:.0%} of repeats "
               f"within {study.tolerance:.0%})", fontsize=11)
  fig.tight_layout()
  return storage.save_figure(fig, path, dpi=_DPI)


def step_size_figure(study: StepSizeStudy, path: str) -> str:
  """Draws the mean one-step change of F and f against the scale c (error bars: one
  standard error over `study.stderr_unit`) with per-state means and the zero line, to a
  PNG at `path` (its directory created if missing); returns `path`."""
  fig = Figure(figsize=(7.0, 4.8))
  ax = fig.subplots()
  c = study.scales
  ax.axhline(0.0, color="black", linewidth=1.0)
  ax.errorbar(c, study.mean_objective_change, yerr=study.stderr_objective_change,
              color="tab:blue", marker="o", capsize=3,
              label=r"$F(x + c\,u_B) - F(x)$, $F = f + \frac{\lambda}{2}\|x\|^2$")
  ax.errorbar(c, study.mean_loss_change, yerr=study.stderr_loss_change, color="tab:orange",
              marker="s", linestyle="--", capsize=3, label=r"$f(x + c\,u_B) - f(x)$")
  for s, per_state in enumerate(study.per_state_objective_change):
    ax.plot(c, per_state, color="tab:blue", alpha=0.25, linewidth=0.8,
            label="per state (F)" if s == 0 else None)
  ax.set_xlabel(r"step-size scale $c$ (step $c\,\eta$)")
  ax.set_ylabel("full-data change after one step")
  ax.set_title(f"One optimizer step from {len(study.steps)} states x "
               f"{study.num_minibatches} minibatches; best c = {study.best_scale:g}\n"
               f"error bars: one standard error over {study.stderr_unit}", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return storage.save_figure(fig, path, dpi=_DPI)
