"""A finished (or running) experiment's workdir, read back for analysis.

A workdir (local or `gs://`) holds `config.json` (the run's config, nested, as it is now),
`config_history.jsonl` (the changes a resumed run made to it, each with its step; see
`invmeasure.training.provenance`) and `metrics.jsonl` (one row per line, each with `step`
and `epoch`; see `invmeasure.training.metric_writer`). Rows carry
different groups of fields (training, epoch-end, diagnostic), so every series extracted
here skips the rows that do not carry the field asked for.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from invmeasure.training import metric_writer, provenance, storage
from invmeasure.errors import ConfigError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# Shown in labels for a config key that one run has and another lacks.
UNSET = "unset"
# Config keys (dotted prefixes) that change what is measured or logged but not the
# trajectory: labels name them only when nothing else differs.
BOOKKEEPING_PREFIXES = ("checkpoint_every_steps", "log_every_steps", "diagnostics.",
                        "data_dir", "experiment")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: where it lives, its config (nested dicts), its metric rows in order, and the
  changes made to its config when it was resumed (`provenance.read_history`)."""

  workdir: str
  config: dict[str, Any]
  rows: list[dict[str, Any]]
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    """The workdir's last path component, e.g. `quickstart` for `runs/quickstart/`; for
    one seed of several (`runs/quickstart/seed_1`, as `--seeds` writes) the one above."""
    path = os.path.normpath(self.workdir)
    name = os.path.basename(path)
    if re.fullmatch(r"seed_\d+", name) and os.path.basename(os.path.dirname(path)):
      return os.path.basename(os.path.dirname(path))
    return name


def _read_config(workdir: str) -> dict[str, Any]:
  """The parsed `config.json` of `workdir`, or {} when the run has none."""
  return provenance.read_config(workdir) or {}


def load_run(workdir: str) -> Run:
  """Reads the config and metric rows of the run in `workdir`.

  Raises:
    ConfigError: (a `ValueError`) with a one-line message naming the path when the
      workdir is missing, has no `metrics.jsonl`, no rows yet, or an unreadable file.
  """
  if not storage.path(workdir).is_dir():
    raise ConfigError(f"--workdir={workdir} does not exist; run experiments.run first")
  metrics_path = os.path.join(workdir, METRICS_FILE)
  if not storage.path(metrics_path).exists():
    raise ConfigError(f"--workdir={workdir} has no {METRICS_FILE}; run experiments.run first")
  try:
    rows = metric_writer.read_metrics(metrics_path)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  if not rows:
    raise ConfigError(f"--workdir={workdir}: {METRICS_FILE} has no rows yet")
  return Run(workdir=workdir, config=_read_config(workdir), rows=rows,
             history=provenance.read_history(workdir))


def has_field(run: Run, field: str) -> bool:
  """Whether any row of `run` carries `field`."""
  return any(row.get(field) is not None for row in run.rows)


def series(run: Run, field: str, *, x: str = "epoch",
           require: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The (x, value) pairs of `field`, in row order, skipping rows that lack either.

  Args:
    run: the run.
    field: the metric, e.g. `grad_norm`.
    x: the abscissa field, `epoch` or `step`.
    require: if given, only rows that also carry this field count (e.g.
      `epoch_avg_train_loss` to keep the rows written at epoch ends).

  Returns:
    Two float arrays of equal length (empty when no row carries `field`).
  """
  pairs = [(row[x], row[field]) for row in run.rows
           if row.get(field) is not None and row.get(x) is not None
           and (require is None or row.get(require) is not None)]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  xs, values = zip(*pairs)
  return np.asarray(xs, dtype=float), np.asarray(values, dtype=float)


def config_changes(run: Run, *, x: str = "epoch") -> list[tuple[float, str]]:
  """(x, what changed) for each recorded change of the run's config, e.g.
  `(1.3, "num_train_steps 60 -> 120")`, x being the epoch (or step) it took effect."""
  per_step = next((row["epoch"] / row["step"] for row in run.rows
                   if row.get("step") and row.get("epoch") is not None), None)
  marks = []
  for entry in run.history:
    at = entry["step"] if x == "step" or per_step is None else entry["step"] * per_step
    what = ", ".join(f"{field} {_format_value(change['old'])} -> {_format_value(change['new'])}"
                     for field, change in entry["changes"].items())
    marks.append((float(at), what))
  return marks


def _same(a: float, b: float) -> bool:
  return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def lr_change_epochs(run: Run, *, x: str = "epoch") -> list[float]:
  """Where a constant learning rate stops, e.g. the decays of a step schedule.

  A row's `lr` is the rate of the last step before it, so the change falls between the
  last row at the old rate and the first at the new one; the epoch of the last row at
  the old rate is returned (exact when, as usual, the boundary falls on a logged step).
  Only the end of a stretch of at least two rows at one rate counts, so schedules that
  vary smoothly (linear warmup, cosine) give no lines, and a step decay after a warmup
  gives just the decay.
  """
  xs, lrs = series(run, "lr", x=x)
  changes = []
  for i in range(2, len(lrs)):
    if not _same(lrs[i], lrs[i - 1]) and _same(lrs[i - 1], lrs[i - 2]):
      changes.append(float(xs[i - 1]))
  return changes


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested config dicts as one dict of dotted keys (`optimizer.learning_rate`).

  Lists (tuples in the config file) become tuples, so values compare and hash.
  """
  flat: dict[str, Any] = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, prefix=f"{name}."))
    elif isinstance(value, list):
      flat[name] = tuple(value)
    else:
      flat[name] = value
  return flat


def _format_value(value: Any) -> str:
  """A config value as it reads in a label: 0.05, step, (30.0, 60.0), True."""
  if isinstance(value, tuple):
    inner = ", ".join(_format_value(v) for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  return str(value)


def config_differences(runs: Sequence[Run]) -> list[str]:
  """One label per run naming the config values that differ between the runs.

  E.g. `["optimizer.learning_rate=0.1", "optimizer.learning_rate=0.05"]`; several
  differing keys are joined by ", " in sorted order, and a key one run lacks shows as
  `unset`. Keys that only change what is logged or measured (`BOOKKEEPING_PREFIXES`)
  are named only when nothing else differs. When nothing differs (or there is one run), each label is the workdir's name;
  runs whose configs agree while others differ get their name appended.
  """
  flats = [flatten_config(run.config) for run in runs]
  keys = sorted(set().union(*flats)) if flats else []
  differing = [key for key in keys
               if len({_format_value(flat.get(key, UNSET)) for flat in flats}) > 1]
  trajectory = [key for key in differing if not key.startswith(BOOKKEEPING_PREFIXES)]
  differing = trajectory or differing
  if not differing:
    return [run.name for run in runs]
  labels = [", ".join(f"{key}={_format_value(flat.get(key, UNSET))}" for key in differing)
            for flat in flats]
  return [f"{label} ({run.name})" if labels.count(label) > 1 else label
          for label, run in zip(labels, runs)]


def seed_groups(runs: Sequence[Run]) -> list[list[Run]]:
  """The runs grouped by config, ignoring `seed` (replicates of one experiment share a
  group), in the order of each group's first run."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    flat = flatten_config(run.config)
    flat.pop("seed", None)
    key = tuple(sorted((k, _format_value(v)) for k, v in flat.items()))
    groups.setdefault(key, []).append(run)
  return list(groups.values())


def group_labels(groups: Sequence[Sequence[Run]]) -> list[str]:
  """`config_differences` of the groups' first runs; a group of several seeds says so."""
  if len(groups) == 1 and len(groups[0]) > 1:
    labels = [""]
  else:
    labels = config_differences([group[0] for group in groups])
  out = []
  for label, group in zip(labels, groups):
    if len(group) > 1:
      seeds = ", ".join(str(run.config.get("seed", "?")) for run in group)
      label = (f"{label}: " if label else "") + (
          f"mean of {len(group)} seeds ({seeds}), band: min to max")
    out.append(label)
  return out
