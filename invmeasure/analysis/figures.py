"""The paper's training figures, drawn from one or more runs' workdirs.

- `training_dynamics.png` (Figures 1-3): training loss, gradient norm, gradient noise and
  sharpness against the epoch, one colour per run, dotted vertical lines where a run's
  learning rate steps down.
- `moving_average_vs_last_iterate.png` (Figure 5): the moving average of the minibatch
  losses over each epoch (eq. 2) next to the full-batch loss at the epoch's last iterate
  (eq. 3); written only when some run has epoch-end rows.
- `weights.png`: the weight norm (Theorem 4.3 keeps it bounded under weight decay) and
  the distance travelled from the initialisation.

A run whose config changed when it was resumed (`config_history.jsonl`) has a dash-dot line
where each change took effect, and its label names the change.

Runs are labelled by what differs between their configs (`runs.config_differences`); runs
whose configs differ only in `seed` are replicates, drawn as their mean with a min-to-max
band (`runs.seed_groups`). A
field no run measured leaves its panel marked "not measured". Figures are built with
matplotlib's object API on its Agg canvas, so importing this module leaves pyplot and
its backend alone.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from invmeasure.analysis import runs as runs_lib
from invmeasure.analysis.runs import Run
from invmeasure.training import storage
from invmeasure.errors import ConfigError

TRAINING_DYNAMICS = "training_dynamics.png"
MOVING_AVERAGE = "moving_average_vs_last_iterate.png"
WEIGHTS = "weights.png"
_DPI = 110
_EPOCH_END = "epoch_avg_train_loss"  # only epoch-end rows carry it
_LABEL_WIDTH = 70  # run labels wrap at this many characters


@dataclasses.dataclass(frozen=True)
class Curve:
  """One field drawn in a panel: how to fetch it and its line style."""

  field: str
  label: str
  linestyle: str = "-"
  marker: str | None = "o"
  transform: str | None = None  # "sqrt_clipped": sqrt(max(value, 0))
  require: str | None = None  # only rows that also carry this field
  applies: Callable[[Run], bool] | None = None  # draw only for runs where this holds


@dataclasses.dataclass(frozen=True)
class Panel:
  """An axes of a figure: its title, y label and curves."""

  title: str
  ylabel: str
  curves: tuple[Curve, ...]
  missing_hint: str = ""  # added to "not measured" when no run has the curves
  log_y: bool = False  # log scale when the values span a decade or more


DYNAMICS_PANELS = (
    Panel("training loss", "loss", (
        Curve("train_loss", "minibatch mean (train_loss)", marker=None),
        Curve("full_loss", "full batch (full_loss)", linestyle="--"),
    ), log_y=True),
    Panel("gradient norm", "norm", (
        Curve("grad_norm", r"$\|\nabla f\|$ (grad_norm)"),
        Curve("objective_grad_norm", r"$\|\nabla f + \lambda x\|$ (objective_grad_norm)",
              linestyle=":", marker="s"),
        Curve("grad_norm_sq_unbiased", r"bias-corrected $\sqrt{\max(\cdot, 0)}$",
              linestyle="--", marker="^", transform="sqrt_clipped"),
    )),
    Panel("gradient noise", "norm", (
        Curve("noise_norm", r"$\sqrt{E\|g_B - \nabla f\|^2}$ (noise_norm)"),
    )),
    Panel("sharpness", "eigenvalue", (
        Curve("sharpness", r"top Hessian eigenvalue (sharpness)"),
        Curve("update_sharpness", "along the update (update_sharpness)", linestyle="--",
              marker="^"),
    )),
)

def _full_loss_at_epoch_ends(run: Run) -> bool:
  """Whether `full_loss` was measured at half or more of the run's epoch ends."""
  at_ends = runs_lib.series(run, "full_loss", require=_EPOCH_END)[0].size
  return at_ends > 0 and 2 * at_ends >= runs_lib.series(run, _EPOCH_END)[0].size


def _full_loss_elsewhere(run: Run) -> bool:
  return not _full_loss_at_epoch_ends(run)


MOVING_AVERAGE_PANELS = (
    Panel("moving average over the epoch (eq. 2)", "loss", (
        Curve(_EPOCH_END, "epoch_avg_train_loss"),
    ), log_y=True),
    Panel("full batch at the epoch's last iterate (eq. 3)", "loss", (
        Curve("full_loss", "full_loss at epoch ends", require=_EPOCH_END,
              applies=_full_loss_at_epoch_ends),
        Curve("full_loss", "full_loss at diagnostic rounds\n(at_epoch_end was off)",
              linestyle="--", applies=_full_loss_elsewhere),
    ), missing_hint="at epoch ends: set config.diagnostics.at_epoch_end=True", log_y=True),
)

WEIGHTS_PANELS = (
    Panel("weight norm", r"$\|x_t\|$", (Curve("weight_norm", "weight_norm"),)),
    Panel("distance from initialisation", r"$\|x_t - x_0\|$",
          (Curve("distance_from_init", "distance_from_init"),)),
)


def _values(run: Run, curve: Curve) -> tuple[np.ndarray, np.ndarray]:
  """The curve's (epochs, values) in `run`, transformed as the curve says."""
  epochs, values = runs_lib.series(run, curve.field, require=curve.require)
  if curve.transform == "sqrt_clipped":
    values = np.sqrt(np.maximum(values, 0.0))
  return epochs, values


def _group_values(group: Sequence[Run], curve: Curve
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
  """(epochs, mean, low, high) of the curve over a group's runs, at the epochs every run
  measured; low and high (the band) are None for a group of one."""
  if len(group) == 1:
    epochs, values = _values(group[0], curve)
    return epochs, values, None, None
  pairs = [_values(run, curve) for run in group]
  common = pairs[0][0]
  for epochs, _ in pairs[1:]:
    common = np.intersect1d(common, epochs)
  stacked = np.stack([values[np.searchsorted(epochs, common)] for epochs, values in pairs])
  return common, stacked.mean(0), stacked.min(0), stacked.max(0)


def _style_legend(ax: Axes, curves: Sequence[Curve], with_lr_line: bool,
                  with_config_line: bool = False) -> None:
  """A legend of the panel's line styles, in grey, independent of the run colours."""
  handles = [Line2D([], [], color="0.3", linestyle=c.linestyle, marker=c.marker, ms=4,
                    label=c.label) for c in curves]
  if with_lr_line:
    handles.append(Line2D([], [], color="0.3", linestyle=":", lw=1, label="lr change"))
  if with_config_line:
    handles.append(Line2D([], [], color="0.3", linestyle="-.", lw=1, label="config change"))
  if len(handles) > 1:
    ax.legend(handles=handles, fontsize=7, loc="best", handlelength=3)


def _mark_not_measured(ax: Axes, panel: Panel) -> None:
  """Leaves a panel empty but for a note of what was not measured."""
  fields = ", ".join(dict.fromkeys(c.field for c in panel.curves))
  hint = f"\n{panel.missing_hint}" if panel.missing_hint else ""
  ax.text(0.5, 0.5, f"not measured\n({fields}){hint}", ha="center", va="center",
          transform=ax.transAxes, color="0.4", fontsize=9)
  ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def _spans_a_decade(values: np.ndarray) -> bool:
  """Whether positive `values` span a factor of 10 or more (a log scale then reads best)."""
  values = values[np.isfinite(values)]
  return bool(values.size and values.min() > 0 and values.max() >= 10 * values.min())


def _draw_panel(ax: Axes, panel: Panel, groups: Sequence[Sequence[Run]],
                colors: Sequence[str], lr_changes: Sequence[Sequence[float]]) -> bool:
  """Draws every group's curves of `panel` into `ax` (a group of seeds as its mean with a
  min-to-max band); returns whether anything was drawn."""
  ax.set_title(panel.title, fontsize=10)
  drawn = []
  for group, color in zip(groups, colors):
    for curve in panel.curves:
      if curve.applies is not None and not curve.applies(group[0]):
        continue
      epochs, values, low, high = _group_values(group, curve)
      if epochs.size:
        marker = curve.marker if epochs.size <= 60 else None
        ax.plot(epochs, values, color=color, linestyle=curve.linestyle, marker=marker,
                ms=3.5, lw=1.3 if curve.marker is None else 1.1)
        if low is not None:
          ax.fill_between(epochs, low, high, color=color, alpha=0.18, lw=0)
        drawn.append(curve)
  if not drawn:
    _mark_not_measured(ax, panel)
    return False
  any_lr_line = any_config_line = False
  for changes, color in zip(lr_changes, colors):
    for epoch in changes:
      ax.axvline(epoch, color=color, linestyle=":", lw=1, alpha=0.8)
      any_lr_line = True
  for group, color in zip(groups, colors):
    for epoch, _ in runs_lib.config_changes(group[0]):
      ax.axvline(epoch, color=color, linestyle="-.", lw=1, alpha=0.8)
      any_config_line = True
  present = [c for c in panel.curves if c in drawn]
  _style_legend(ax, present, any_lr_line, any_config_line)
  ax.set(xlabel="epoch", ylabel=panel.ylabel)
  if panel.log_y and _spans_a_decade(
      np.concatenate([_values(run, c)[1] for group in groups for run in group
                      for c in present])):
    ax.set_yscale("log")
  ax.grid(alpha=0.25)
  return True


def _title(runs: Sequence[Run], what: str) -> str:
  """`what`, followed by the dataset and model when all runs share them."""
  flats = [runs_lib.flatten_config(run.config) for run in runs]
  shared = []
  for key in ("dataset", "model.name"):
    values = {flat.get(key) for flat in flats}
    if len(values) == 1 and None not in values:
      shared.append(str(values.pop()))
  return f"{what}: {', '.join(shared)}" if shared else what


def _draw_figure(groups: Sequence[Sequence[Run]], labels: Sequence[str],
                 colors: Sequence[str], panels: Sequence[Panel], path: str, title: str, *,
                 ncols: int = 2, panel_size: tuple[float, float] = (6.0, 4.0),
                 sharey: bool = False) -> str:
  """A grid of `panels`, groups of runs overlaid with a shared colour legend; saved to
  `path`."""
  lr_changes = [runs_lib.lr_change_epochs(group[0]) for group in groups]
  nrows = -(-len(panels) // ncols)
  wrapped = [textwrap.fill(label, _LABEL_WIDTH) for label in labels]
  legend_cols = 1 if max(len(label) for label in labels) > _LABEL_WIDTH // 2 else 3
  legend_lines = sum(1 + label.count("\n") for label in wrapped[::legend_cols])
  height = panel_size[1] * nrows + 0.6 + 0.22 * legend_lines
  fig = Figure(figsize=(panel_size[0] * ncols, height))
  axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel()
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  for ax, panel in zip(axes, panels):
    _draw_panel(ax, panel, groups, colors, lr_changes)
  run_handles = [Line2D([], [], color=color, lw=2.5, label=label)
                 for color, label in zip(colors, wrapped)]
  fig.legend(handles=run_handles, loc="lower center", ncol=min(len(groups), legend_cols),
             fontsize=9, frameon=False)
  fig.suptitle(title)
  fig.tight_layout(rect=(0, (0.15 + 0.22 * legend_lines) / height, 1, 1))
  storage.save_figure(fig, path, dpi=_DPI)
  return path


def _check_has_epochs(run: Run) -> None:
  """Raises a one-line `ConfigError` for runs whose rows have no epoch (synthetic_1d)."""
  if runs_lib.has_field(run, "epoch"):
    return
  experiment = run.config.get("experiment", "unknown")
  raise ConfigError(
      f"--workdir={run.workdir} has no epoch in its metric rows (config.experiment="
      f"{experiment!r}); these figures need a training run, and experiments.run already "
      "drew a synthetic_1d run's figure into its figures/")


def write_figures(workdirs: Sequence[str], out_dir: str) -> list[str]:
  """Draws the runs in `workdirs` (overlaid) into PNGs under `out_dir`.

  Every run is read before anything is written, so a bad workdir leaves no files.

  Returns:
    The paths written, in the order training dynamics, moving average (only when some
    run has epoch-end rows), weights.

  Raises:
    ConfigError: a one-line message naming a workdir that cannot be plotted.
  """
  if not workdirs:
    raise ConfigError("no --workdir given; name at least one run directory")
  runs = [runs_lib.load_run(workdir) for workdir in workdirs]
  for run in runs:
    _check_has_epochs(run)
  groups = runs_lib.seed_groups(runs)
  # A run resumed with a changed config says so in its label (config_history.jsonl).
  labels = [label + "".join(f"; from epoch {epoch:.3g}: {what}"
                            for epoch, what in runs_lib.config_changes(group[0]))
            for label, group in zip(runs_lib.group_labels(groups), groups)]
  colors = [f"C{i % 10}" for i in range(len(groups))]
  storage.makedirs(out_dir)

  paths = [_draw_figure(groups, labels, colors, DYNAMICS_PANELS,
                        os.path.join(out_dir, TRAINING_DYNAMICS),
                        _title(runs, "Training dynamics"))]
  with_epoch_ends = [i for i, group in enumerate(groups)
                     if runs_lib.has_field(group[0], _EPOCH_END)]
  if with_epoch_ends:
    paths.append(_draw_figure(
        [groups[i] for i in with_epoch_ends], [labels[i] for i in with_epoch_ends],
        [colors[i] for i in with_epoch_ends], MOVING_AVERAGE_PANELS,
        os.path.join(out_dir, MOVING_AVERAGE), _title(runs, "Full-batch loss two ways"),
        sharey=True))
  paths.append(_draw_figure(groups, labels, colors, WEIGHTS_PANELS,
                            os.path.join(out_dir, WEIGHTS), _title(runs, "Weights")))
  return paths


def draw_run(workdir: str) -> list[str]:
  """The figures of the run in `workdir`, into its `figures/` (what experiments.run draws
  when a run ends)."""
  return write_figures([workdir], os.path.join(workdir, "figures"))


def draw_seeds(workdir: str, seeds: Sequence[int]) -> list[str]:
  """The seeds' mean with a band, from `workdir/seed_<s>`, into `workdir/figures`."""
  return write_figures([os.path.join(workdir, f"seed_{seed}") for seed in seeds],
                       os.path.join(workdir, "figures"))
