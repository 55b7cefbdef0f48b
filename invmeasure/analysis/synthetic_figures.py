"""Figure 4 of the paper: gradient descent on a 1-D function, one row per learning rate.

Columns: the function with the iterates on it; the iterate against the step; the loss
and its time average; the gradient norm and its time average. Drawn from metric rows
(as `metrics.jsonl` holds them), so a run's figure can be redrawn from its files.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from invmeasure.training import storage, synthetic_1d

FIGURE = 'synthetic_1d.png'


def _group_by_lr(rows: Sequence[dict]) -> dict[float, dict[str, np.ndarray]]:
  """Columns of the rows of each learning rate, in order of first appearance."""
  groups: dict[float, list[dict]] = {}
  for row in rows:
    groups.setdefault(row['lr'], []).append(row)
  return {lr: {key: np.array([r[key] for r in group]) for key in group[0]}
          for lr, group in groups.items()}


def plot_gradient_descent_runs(rows: Sequence[dict], fn: Callable, path: str, *,
                               smoothness: float = 1.0, title: str = '') -> None:
  """Draws the runs in `rows` (one row of panels per learning rate) to a PNG at `path`.

  Args:
    rows: metric rows with `lr`, `step`, `x`, `loss`, `grad_norm`, `loss_time_avg` and
      `grad_norm_time_avg`.
    fn: the function the runs minimised, called on a NumPy array of points.
    path: where to write the PNG; its directory is created if missing.
    smoothness: the function's smoothness constant L, to label each rate against 2 / L.
    title: the figure's title.
  """
  runs = _group_by_lr(rows)
  if not runs:
    raise ValueError('no metric rows to plot')
  fig, axes = plt.subplots(len(runs), 4, figsize=(17, 3.4 * len(runs)), squeeze=False)
  threshold = 2.0 / smoothness
  for ax_row, (lr, run) in zip(axes, runs.items()):
    relation = '<' if lr < threshold else '>' if lr > threshold else '='
    label = f'$\\eta$ = {lr:g} {relation} 2/L = {threshold:g}'
    steps = run['step']

    ax = ax_row[0]
    lo, hi = min(run['x'].min(), 0.0), max(run['x'].max(), 0.0)
    margin = 0.25 * (hi - lo) + 0.5
    grid = np.linspace(lo - margin, hi + margin, 400)
    ax.plot(grid, np.asarray(fn(grid)), color='0.4', lw=1.5, label='f(x)')
    points = ax.scatter(run['x'], run['loss'], c=steps, cmap='viridis', s=18, zorder=3)
    ax.plot(run['x'][0], run['loss'][0], '*', color='crimson', ms=11, zorder=4,
            label='$x_0$')
    fig.colorbar(points, ax=ax, label='step')
    ax.set(xlabel='x', ylabel='f(x)', title=f'iterates on f ({label})')
    ax.legend(loc='upper center', fontsize=8)

    ax = ax_row[1]
    ax.plot(steps, run['x'], '.-', lw=0.6, ms=3)
    ax.set(xlabel='step', ylabel='$x_t$', title='iterate')

    ax = ax_row[2]
    ax.plot(steps, run['loss'], '.-', lw=0.5, ms=2.5, color='tab:blue', alpha=0.6,
            label='$f(x_t)$')
    ax.plot(steps, run['loss_time_avg'], lw=2, color='tab:orange', label='time average')
    ax.set(xlabel='step', ylabel='loss', title='loss')
    ax.legend(fontsize=8)

    ax = ax_row[3]
    ax.plot(steps, run['grad_norm'], '.-', lw=0.5, ms=2.5, color='tab:blue', alpha=0.6,
            label="$|f'(x_t)|$")
    ax.plot(steps, run['grad_norm_time_avg'], lw=2, color='tab:orange',
            label='time average')
    ax.set(xlabel='step', ylabel='gradient norm', title='gradient norm')
    ax.legend(fontsize=8)

  if title:
    fig.suptitle(title)
  fig.tight_layout()
  directory = os.path.dirname(path)
  if directory:
    storage.makedirs(directory)
  storage.save_figure(fig, path, dpi=110)
  plt.close(fig)


def draw_run(workdir: str, rows: Sequence[dict], config) -> str:
  """Draws the 1-D example run of `config` (its metric `rows`) into
  `workdir/figures/synthetic_1d.png`; returns the path."""
  path = os.path.join(workdir, 'figures', FIGURE)
  plot_gradient_descent_runs(rows, synthetic_1d.get_function(config.function), path,
                             smoothness=synthetic_1d.SMOOTHNESS,
                             title=f'Gradient descent on {config.function}')
  return path
