"""Figures of the invariant-measure claims, drawn from `invmeasure.analysis.invariant` results.

- `plot_birkhoff_averages`: per-iterate values against their Birkhoff (time) averages,
  one panel per quantity (loss, gradient norm, noise, sharpness by default).
- `plot_window_distances`: W1 and sliced W1 between consecutive windows of iterates
  against the distance the iterates travelled between them.
- `plot_equation10`: the two sides of equation (10) over time, in the update's terms and
  the paper's, and the ratio of their running time averages.
- `plot_weight_ball`: the weight norm over time against the radius of Theorem 4.3's ball.

Each function writes a PNG to the path it is given (creating its directory) and returns
the path. Figures are built with matplotlib's object API on its Agg canvas, so importing
this module leaves pyplot and its backend alone.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from invmeasure.analysis import invariant
from invmeasure.training import storage
from invmeasure.analysis.invariant import Equation10, WindowComparison

BIRKHOFF_FIELDS = ("full_loss", "grad_norm", "noise_norm", "sharpness")
_DPI = 110
_MAX_MARKED_POINTS = 60  # beyond this many points, lines without markers


def _mark_empty(ax: Axes, what: str) -> None:
  """Leaves a panel empty but for a note of what no row carried."""
  ax.text(0.5, 0.5, f"not measured\n({what})", ha="center", va="center",
          transform=ax.transAxes, color="0.4", fontsize=9)
  ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def _log_if_positive_decade(ax: Axes, *arrays: np.ndarray) -> None:
  """Log y scale when all the values are positive and span a factor of 10 or more."""
  values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(0)
  values = values[np.isfinite(values)]
  if values.size and values.min() > 0 and values.max() >= 10 * values.min():
    ax.set_yscale("log")


def _field_series(rows: Sequence[Mapping[str, Any]], field: str,
                  x: str) -> tuple[np.ndarray, np.ndarray]:
  """(x, value) of the rows carrying both with finite values."""
  pairs = [(float(row[x]), float(row[field])) for row in rows
           if isinstance(row.get(field), (int, float)) and isinstance(row.get(x), (int, float))
           and math.isfinite(row[field]) and math.isfinite(row[x])]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  xs, values = zip(*pairs)
  return np.asarray(xs), np.asarray(values)


def plot_birkhoff_averages(rows: Sequence[Mapping[str, Any]], path: str, *,
                           fields: Sequence[str] = BIRKHOFF_FIELDS, x: str = "step",
                           title: str = "Per-iterate values and their time averages") -> str:
  """Each field's per-row values (thin) and Birkhoff average from the first row (thick).

  Args:
    rows: metric rows (`runs.load_run(workdir).rows`).
    path: the PNG to write.
    fields: one panel per field; a field no row carries leaves its panel marked.
    x: the abscissa field, `step` or `epoch`.
    title: the figure's title.
  """
  ncols = 2 if len(fields) > 1 else 1
  nrows = -(-len(fields) // ncols)
  fig = Figure(figsize=(6.0 * ncols, 3.8 * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[len(fields):]:
    ax.set_visible(False)
  for ax, field in zip(axes, fields):
    ax.set_title(field, fontsize=10)
    xs, values = _field_series(rows, field, x)
    if not xs.size:
      _mark_empty(ax, field)
      continue
    averages = invariant.birkhoff_averages(values)
    marker = "." if xs.size <= _MAX_MARKED_POINTS else None
    ax.plot(xs, values, color="tab:blue", lw=0.7, alpha=0.6, marker=marker, ms=3,
            label="per iterate")
    ax.plot(xs, averages, color="tab:orange", lw=2, label="Birkhoff average")
    _log_if_positive_decade(ax, values)
    ax.set(xlabel=x, ylabel=field)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  return storage.save_figure(fig, path, dpi=_DPI)


def plot_window_distances(comparison: WindowComparison, path: str, *,
                          title: str = "Empirical measures of consecutive windows") -> str:
  """W1 between consecutive windows against the travel between them, and their ratio.

  Left: mean per-coordinate W1, sliced W1 and the two travel distances against the first
  step of the later window, with the log-log slopes in the legend. Right: the
  separation (sliced W1 over its travel bound), near 0 when the windows sample one
  measure and near 1 when they are apart.
  """
  fig = Figure(figsize=(12.0, 4.2))
  left, right = fig.subplots(1, 2)
  at = comparison.window_starts[1:]
  left.plot(at, comparison.mean_w1, "o-", ms=3.5,
            label=f"mean coordinate W1 (slope {comparison.w1_slope:.2f})")
  left.plot(at, comparison.sliced_w1, "s--", ms=3.5, label="sliced W1")
  left.plot(at, comparison.travel_mean, "^-", ms=3.5,
            label=f"mean cross-window ||X - Y|| (slope {comparison.travel_slope:.2f})")
  left.plot(at, comparison.travel_last, "v:", ms=3.5, label="||last - previous last||")
  _log_if_positive_decade(left, comparison.mean_w1, comparison.sliced_w1,
                          comparison.travel_mean, comparison.travel_last)
  left.set(xlabel="first step of the later window", ylabel="distance",
           title=f"windows of {comparison.window_size} iterates")
  left.grid(alpha=0.25)
  left.legend(fontsize=7)
  right.plot(at, comparison.separation, "o-", ms=3.5, color="tab:purple")
  right.axhline(1.0, color="0.5", lw=0.8, linestyle=":")
  finite = comparison.separation[np.isfinite(comparison.separation)]
  right.set_ylim(0.0, max(1.05, float(finite.max()) * 1.05) if finite.size else 1.05)
  right.set(xlabel="first step of the later window", ylabel="sliced W1 / (E|theta_1| travel)",
            title="separation (0: one measure, 1: apart)")
  right.grid(alpha=0.25)
  fig.suptitle(title)
  fig.tight_layout()
  return storage.save_figure(fig, path, dpi=_DPI)


def _running_ratio(rhs: np.ndarray, lhs: np.ndarray) -> np.ndarray:
  """Ratio of the running time averages, NaN where the lhs average is zero."""
  averages_lhs = invariant.birkhoff_averages(lhs)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(averages_lhs != 0, invariant.birkhoff_averages(rhs) / averages_lhs, np.nan)


def _draw_sides(ax: Axes, steps: np.ndarray, sides: Sequence[tuple[np.ndarray, str, str]]) -> None:
  """Per-row values (thin) and running time averages (thick) of each side."""
  marker = "." if steps.size <= _MAX_MARKED_POINTS else None
  for values, label, color in sides:
    if not np.all(np.isfinite(values)):
      continue
    ax.plot(steps, values, color=color, lw=0.6, alpha=0.45, marker=marker, ms=2.5)
    ax.plot(steps, invariant.birkhoff_averages(values), color=color, lw=2, label=label)
  ax.set(xlabel="step")
  ax.grid(alpha=0.25)
  ax.legend(fontsize=7)


def plot_equation10(balance: Equation10, path: str, *,
                    title: str = "Equation (10): balance at an invariant measure") -> str:
  """The sides of equation (10) per row (thin) with running averages (thick), and their ratio.

  Panels: the update form (-<grad F, u> against (1/2)(s_u + lambda)||u||^2); the paper's
  form (||grad f||^2, its bias-corrected estimate, (eta/2) s_u ||g_B||^2); the ratio
  rhs / lhs of the running time averages of each form, which tends to 1 at an invariant
  measure.
  """
  fig = Figure(figsize=(18.0, 4.2))
  ax_update, ax_paper, ax_ratio = fig.subplots(1, 3)
  update, paper = balance.update, balance.paper
  ax_update.set_title("update form", fontsize=10)
  if update.steps.size:
    _draw_sides(ax_update, update.steps, [
        (update.lhs, r"$-\langle\nabla F, u\rangle$", "tab:blue"),
        (update.rhs, r"$\frac{1}{2}(s_u + \lambda)\|u\|^2$", "tab:orange")])
    ax_update.set_title(f"update form: (rhs - lhs) / lhs = {update.relative_gain:.3g} "
                        f"+- {update.relative_gain_stderr:.2g}", fontsize=10)
  else:
    _mark_empty(ax_update, ", ".join(invariant.UPDATE_FIELDS))
  ax_paper.set_title("paper's form", fontsize=10)
  if paper.steps.size:
    _draw_sides(ax_paper, paper.steps, [
        (paper.lhs, r"$\|\nabla f\|^2$", "tab:blue"),
        (paper.lhs_unbiased, r"$\|\nabla f\|^2$ bias-corrected", "tab:green"),
        (paper.rhs, r"$\frac{\eta}{2} s_u \|g_B\|^2$", "tab:orange")])
    _log_if_positive_decade(ax_paper, paper.lhs, paper.rhs)
  else:
    _mark_empty(ax_paper, ", ".join(invariant.PAPER_FIELDS))
  ax_ratio.set_title("rhs / lhs of the running averages", fontsize=10)
  drawn = False
  for steps, rhs, lhs, label in ((update.steps, update.rhs, update.lhs, "update form"),
                                 (paper.steps, paper.rhs, paper.lhs, "paper's form")):
    if steps.size:
      ax_ratio.plot(steps, _running_ratio(rhs, lhs), lw=1.6, label=label)
      drawn = True
  if drawn:
    ax_ratio.axhline(1.0, color="0.4", lw=0.8, linestyle=":")
    ax_ratio.set(xlabel="step", ylabel="ratio")
    ax_ratio.grid(alpha=0.25)
    ax_ratio.legend(fontsize=8)
  else:
    _mark_empty(ax_ratio, "either form")
  fig.suptitle(title)
  fig.tight_layout()
  return storage.save_figure(fig, path, dpi=_DPI)


def plot_weight_ball(steps: Any, weight_norms: Any, radius: float, path: str, *,
                     title: str = "Weight norm and the ball of Theorem 4.3") -> str:
  """||x_t|| against the step with the ball's radius R as a horizontal line.

  Args:
    steps: (T,) steps.
    weight_norms: (T,) weight norms at those steps.
    radius: R from `invariant.weight_ball_radius`.
    path: the PNG to write.
    title: the figure's title.
  """
  steps = np.asarray(steps, dtype=np.float64)
  weight_norms = np.asarray(weight_norms, dtype=np.float64)
  fig = Figure(figsize=(6.5, 4.2))
  ax = fig.subplots()
  marker = "o" if steps.size <= _MAX_MARKED_POINTS else None
  ax.plot(steps, weight_norms, marker=marker, ms=3, lw=1.3, label=r"$\|x_t\|$")
  ax.axhline(radius, color="tab:red", linestyle="--", lw=1.2,
             label=rf"$R = \max(\|x_0\|, G/\lambda)$ = {radius:.4g}")
  if weight_norms.size:
    ax.set_title(f"max ||x_t|| / R = {float(np.max(weight_norms)) / radius:.3g}", fontsize=10)
  ax.set_ylim(bottom=0.0)
  ax.set(xlabel="step", ylabel="weight norm")
  ax.grid(alpha=0.25)
  ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  return storage.save_figure(fig, path, dpi=_DPI)
