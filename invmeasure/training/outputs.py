"""What a training run writes as it goes: metric rows, projection rows, TensorBoard
scalars and the progress bar. Process 0 writes; on other processes every call is a no-op.

A quantity that is undefined at a row is left out of it rather than written as NaN: the
curvature along the update (`UNDEFINED_ALONG_A_ZERO_UPDATE`) is 0/0 when the update has
(numerically) zero length, e.g. at the end of a cosine schedule.
"""

from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np

from invmeasure.training import metric_writer, projections, storage

METRICS_FILE = "metrics.jsonl"
UNDEFINED_ALONG_A_ZERO_UPDATE = ("update_sharpness", "update_sharpness_independent",
                                 "step_update_sharpness")


def host(tree):
  """Values of replicated (possibly multi-process) arrays as numpy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def defined(row: dict) -> dict:
  """`row` without the quantities that are undefined (non-finite) where it was measured."""
  return {k: v for k, v in row.items()
          if not (k in UNDEFINED_ALONG_A_ZERO_UPDATE and isinstance(v, float)
                  and not math.isfinite(v))}


class Outputs:
  """The open outputs of one run, from its first step (`start`) to `num_steps`."""

  def __init__(self, workdir: str, start: int, num_steps: int, with_projections: bool):
    primary = jax.process_index() == 0
    self._rows = (metric_writer.MetricWriter(os.path.join(workdir, METRICS_FILE))
                  if primary else None)
    self._projections = (metric_writer.MetricWriter(
        os.path.join(workdir, projections.PROJECTIONS_FILE))
        if primary and with_projections else None)
    self._tensorboard = (storage.tensorboard_writer(os.path.join(workdir, "tensorboard"),
                                                    flush_secs=30) if primary else None)
    self._progress = _progress(start, num_steps) if primary else None
    # Projection rows wait on the device until the next metric row or checkpoint: reading
    # each back at once would stop asynchronous dispatch every few steps.
    self._pending: list[tuple[int, jax.Array, jax.Array | None]] = []
    self.last_row: dict = {}

  def projection(self, step: int, weights: jax.Array, before: jax.Array | None) -> None:
    """The weights' projections after `step` (and before it, for the update's)."""
    self._pending.append((step, weights, before))

  def row(self, row: dict) -> None:
    """Writes one metric row (with `step`), after the projection rows up to it."""
    self._write_projections()
    self.last_row = row = defined(row)
    if self._rows:
      self._rows.write(row)
    if self._tensorboard:
      for name, value in row.items():
        if (name not in ("step", "epoch") and isinstance(value, (int, float))
            and math.isfinite(value)):
          self._tensorboard.add_scalar(name, value, row["step"])
    if self._progress is not None and "train_loss" in row:
      # Only rows with a training loss move it: a diagnostic-only row has none to show.
      self._progress.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)

  def flush(self) -> None:
    """Every row so far made durable (on object storage, uploaded): before a checkpoint."""
    self._write_projections()
    for writer in (self._rows, self._projections):
      if writer:
        writer.flush()

  def advance(self) -> None:
    if self._progress is not None:
      self._progress.update(1)

  def close(self) -> None:
    try:
      for writer in (self._rows, self._projections, self._tensorboard):
        if writer:
          writer.close()
    finally:
      if self._progress is not None:
        self._progress.close()

  def _write_projections(self) -> None:
    for step, weights, before in self._pending:
      row = {"step": step, "weights": host(weights)}
      if before is not None:
        row["update"] = row["weights"] - host(before)
      if self._projections:
        self._projections.write(row)
    self._pending.clear()


def _progress(start: int, total: int):
  import tqdm
  return tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                   file=sys.stderr, mininterval=1.0)
