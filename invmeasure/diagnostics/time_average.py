"""Birkhoff (time) averages of observables along a trajectory, as a functional accumulator.

The empirical measure of the iterates converges to an invariant measure even when the
iterates themselves keep moving; time averages (1/T) sum_t phi(x_t) are what converge.
`time_average(window, num_windows)` returns an optax-style `(init, update, summarize)`
triple over any pytree of observables (scalars or arrays): a running mean and variance
(Welford) of the whole trajectory, plus the means of the last `num_windows` consecutive
windows of `window` updates. Window means that agree within their batch-means standard
error say the time average has converged; a trend across them says it has not.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from invmeasure.diagnostics._types import PyTree


class TimeAverageState(NamedTuple):
  """Running sums of `time_average`; build with its `init`."""
  count: jax.Array  # type: ignore[assignment]  # updates seen (shadows tuple.count)
  mean: PyTree               # running mean of each observable
  sum_sq_dev: PyTree         # running sum of squared deviations from the mean (Welford)
  window_sum: PyTree         # sum over the current, incomplete window
  window_means: PyTree       # ring buffer, leading axis num_windows
  num_windows_done: jax.Array


class TimeAverageSummary(NamedTuple):
  """What `summarize` returns: the time average and the windows that judge it."""
  count: jax.Array  # type: ignore[assignment]  # T, the number of observations
  mean: PyTree               # Birkhoff average (1/T) sum_t phi_t
  variance: PyTree           # variance of phi_t over the trajectory
  window_means: PyTree       # last complete windows, oldest first; NaN where none yet
  num_windows: jax.Array     # complete windows in `window_means`
  window_stderr: PyTree      # std of the window means / sqrt(their number)
  window_drift: PyTree       # newest window mean minus the mean of those before it


class TimeAverage(NamedTuple):
  """The accumulator's three pure functions, as an optax `GradientTransformation` holds its."""
  init: Callable[[PyTree], TimeAverageState]                     # init(example)
  update: Callable[[TimeAverageState, PyTree], TimeAverageState]  # update(state, observables)
  summarize: Callable[[TimeAverageState], TimeAverageSummary]     # summarize(state)


def time_average(window: int, num_windows: int = 16) -> TimeAverage:
  """Accumulator of time averages with windows of `window` steps, keeping `num_windows`.

  Args:
    window: updates per window, >= 1.
    num_windows: complete windows kept (a ring buffer), >= 2.

  Returns:
    `TimeAverage(init, update, summarize)`: pure and jittable, over any pytree of
    observables (e.g. `{"loss": loss, "weights": params}`).
  """
  if window < 1 or num_windows < 2:
    raise ValueError(
        f"time_average needs window >= 1 and num_windows >= 2, got window={window}, "
        f"num_windows={num_windows}")

  def init(example: PyTree) -> TimeAverageState:
    """State for observables shaped like `example` (a pytree of arrays)."""
    zeros = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), _acc_dtype(x)), example)
    ring = jax.tree.map(lambda z: jnp.zeros((num_windows,) + z.shape, z.dtype), zeros)
    zero_count = jnp.zeros((), jnp.int32)
    return TimeAverageState(zero_count, zeros, zeros, zeros, ring, zero_count)

  def update(state: TimeAverageState, observables: PyTree) -> TimeAverageState:
    """Folds in the observables of one more step."""
    count = state.count + 1
    obs = jax.tree.map(lambda x, m: jnp.asarray(x, m.dtype), observables, state.mean)
    delta = jax.tree.map(jnp.subtract, obs, state.mean)
    mean = jax.tree.map(lambda m, d: m + d / count, state.mean, delta)
    sum_sq_dev = jax.tree.map(lambda s, d, x, m: s + d * (x - m),
                              state.sum_sq_dev, delta, obs, mean)
    window_sum = jax.tree.map(jnp.add, state.window_sum, obs)
    complete = count % window == 0
    slot = state.num_windows_done % num_windows
    window_means = jax.tree.map(
        lambda ring, ws: ring.at[slot].set(jnp.where(complete, ws / window, ring[slot])),
        state.window_means, window_sum)
    window_sum = jax.tree.map(lambda ws: jnp.where(complete, jnp.zeros_like(ws), ws),
                              window_sum)
    done = state.num_windows_done + complete.astype(jnp.int32)
    return TimeAverageState(count, mean, sum_sq_dev, window_sum, window_means, done)

  def summarize(state: TimeAverageState) -> TimeAverageSummary:
    """Time average, variance and the window statistics that judge its convergence."""
    held = jnp.minimum(state.num_windows_done, num_windows)
    start = jnp.where(state.num_windows_done > num_windows,
                      state.num_windows_done % num_windows, 0)
    order = (jnp.arange(num_windows) + start) % num_windows
    valid = jnp.arange(num_windows) < held

    def ordered(ring):
      mask = valid.reshape((-1,) + (1,) * (ring.ndim - 1))
      return jnp.where(mask, ring[order], jnp.nan)

    window_means = jax.tree.map(ordered, state.window_means)
    n = held.astype(jnp.float32)

    def stderr(means):
      mask = valid.reshape((-1,) + (1,) * (means.ndim - 1))
      mu = jnp.sum(jnp.where(mask, means, 0.0), axis=0) / n
      var = jnp.sum(jnp.where(mask, (means - mu) ** 2, 0.0), axis=0) / (n - 1)
      return jnp.sqrt(var / n)

    def drift(means):
      mask = (jnp.arange(num_windows) < held - 1).reshape((-1,) + (1,) * (means.ndim - 1))
      earlier = jnp.sum(jnp.where(mask, means, 0.0), axis=0) / (n - 1)
      return means[jnp.maximum(held - 1, 0)] - earlier

    return TimeAverageSummary(
        count=state.count,
        mean=state.mean,
        variance=jax.tree.map(lambda s: s / state.count, state.sum_sq_dev),
        window_means=window_means,
        num_windows=held,
        window_stderr=jax.tree.map(stderr, window_means),
        window_drift=jax.tree.map(drift, window_means),
    )

  return TimeAverage(init, update, summarize)


def _acc_dtype(x):
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return jnp.promote_types(dtype, jnp.float32)
