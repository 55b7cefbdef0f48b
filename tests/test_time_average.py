"""Birkhoff-average accumulator against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invmeasure import diagnostics as dg


def run(acc, sequence):
  state = acc.init(jax.tree.map(lambda x: x[0], sequence))
  update = jax.jit(acc.update)
  for t in range(len(jax.tree.leaves(sequence)[0])):
    state = update(state, jax.tree.map(lambda x: x[t], sequence))
  return jax.jit(acc.summarize)(state)


def test_periodic_sequence_time_average_is_the_orbit_mean():
  period = np.array([0.3, 1.7, -0.4, 2.0, 0.9])
  seq = np.tile(period, 40)  # 200 steps
  summary = run(dg.time_average(window=10, num_windows=8), {"phi": seq})
  np.testing.assert_allclose(summary.mean["phi"], period.mean(), rtol=1e-6)
  np.testing.assert_allclose(summary.variance["phi"], period.var(), rtol=1e-5)
  # Windows of two full periods all have the orbit mean: converged, no drift.
  np.testing.assert_allclose(summary.window_means["phi"], period.mean(), rtol=1e-6)
  assert float(summary.window_stderr["phi"]) < 1e-6
  assert abs(float(summary.window_drift["phi"])) < 1e-6


def test_windows_of_a_trend_and_ring_order():
  seq = np.arange(37, dtype=np.float64)
  summary = run(dg.time_average(window=5, num_windows=3), {"t": seq})
  # 7 complete windows; the last three are steps 20-24, 25-29, 30-34 (oldest first).
  np.testing.assert_allclose(summary.window_means["t"], [22.0, 27.0, 32.0])
  assert int(summary.num_windows) == 3 and int(summary.count) == 37
  np.testing.assert_allclose(summary.mean["t"], 18.0)
  np.testing.assert_allclose(summary.window_drift["t"], 32.0 - 24.5)
  np.testing.assert_allclose(summary.window_stderr["t"], np.std([22, 27, 32], ddof=1) / np.sqrt(3),
                             rtol=1e-6)


def test_incomplete_windows_are_nan_and_arrays_work():
  rng = np.random.default_rng()
  seq = rng.normal(size=(7, 3))
  summary = run(dg.time_average(window=3, num_windows=4), {"v": seq})
  means = np.asarray(summary.window_means["v"])
  # float32 sums of N(0, 1) values: a mean near 0 carries an absolute error ~1e-7.
  np.testing.assert_allclose(means[:2], [seq[:3].mean(0), seq[3:6].mean(0)], rtol=1e-6,
                             atol=1e-6)
  assert np.isnan(means[2:]).all()
  np.testing.assert_allclose(summary.mean["v"], seq.mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(summary.variance["v"], seq.var(0), rtol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="window >= 1"):
    dg.time_average(window=0)
  with pytest.raises(ValueError, match="num_windows >= 2"):
    dg.time_average(window=5, num_windows=1)
