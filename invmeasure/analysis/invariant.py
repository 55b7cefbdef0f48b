"""The invariant-measure claims, measured on recorded iterates and metric rows.

The paper's picture: the weights x_t keep moving, but their empirical measure
(1/T) sum_t delta_{x_t} converges to an invariant measure of the SGD map, so time
(Birkhoff) averages of observables converge while the observables themselves keep
fluctuating, and at the invariant measure the expected one-step change of the objective
vanishes (equation (10)). The functions here test each part on numpy arrays:

- `birkhoff_averages`: running time averages of a series.
- `wasserstein_1d`, `sliced_wasserstein`: W1 between empirical measures.
- `compare_windows`: consecutive windows of recorded iterates (e.g. the weight
  projections of `projections.jsonl`): how far apart their empirical measures are (W1)
  against how far the weights travelled between them.
- `fluctuation_and_averages`: one scalar series: per-window fluctuation against the
  convergence of its Birkhoff average.
- `weight_ball_radius`: the ball of Theorem 4.3 for SGD with L2 weight decay.
- `equation10`: the two sides of equation (10) per metric row and averaged in time.

Windows are always of equal size: of the rows at or after the start (`start_fraction`
of the last step), the earliest `rows mod num_windows` are left out, so every window has
`rows // num_windows` rows and the windows' means are exactly the batch means of
`invmeasure.diagnostics.time_average`.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import spatial, special, stats

from invmeasure.diagnostics.time_average import time_average

# Cross-window distance matrices are built this many entries at a time, to bound memory.
_PAIR_CHUNK = 1 << 20


def birkhoff_averages(values: Any) -> np.ndarray:
  """Running time averages A_t = (1/t) sum_{s<=t} phi(x_s) along axis 0 (t = 1..T).

  Args:
    values: array of shape (T, ...), the observable at each recorded iterate.

  Returns:
    A float64 array of the same shape; row t-1 holds the average of rows 0..t-1.

  Raises:
    ValueError: when `values` is a scalar or holds a NaN or infinite entry.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim == 0:
    raise ValueError("birkhoff_averages: values is a scalar; pass a series of shape (T, ...)")
  _check_finite(values, "birkhoff_averages", "values")
  counts = np.arange(1, values.shape[0] + 1, dtype=np.float64)
  return np.cumsum(values, axis=0) / counts.reshape((-1,) + (1,) * (values.ndim - 1))


def wasserstein_1d(a: Any, b: Any) -> float:
  """W1 between the empirical measures of two 1-D samples (sizes may differ).

  W1(mu, nu) = integral |F_mu(s) - F_nu(s)| ds, computed by `scipy.stats.wasserstein_distance`.
  """
  a = _sample_1d(a, "a")
  b = _sample_1d(b, "b")
  return float(stats.wasserstein_distance(a, b))


def sliced_wasserstein(x: Any, y: Any, num_directions: int = 128, seed: int = 0) -> float:
  """Sliced W1: the mean over random unit directions theta in R^d of W1(<theta, x>, <theta, y>).

  The directions are uniform on the unit sphere (normalised Gaussians) and fixed by
  `seed`, so calls with the same seed and dimension compare samples along the same
  directions. It is a Monte Carlo estimate of E_theta W1(theta#mu, theta#nu), which is
  at most W1(mu, nu) in R^d and zero only when the two measures agree.

  Args:
    x: (m, d) sample of the first measure.
    y: (k, d) sample of the second measure, same d.
    num_directions: number of random directions.
    seed: seed of the directions.
  """
  x = _sample_2d(x, "sliced_wasserstein", "x")
  y = _sample_2d(y, "sliced_wasserstein", "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"sliced_wasserstein: x has dimension {x.shape[1]} and y has "
                     f"{y.shape[1]}; both samples must live in the same R^d")
  if num_directions < 1:
    raise ValueError(f"sliced_wasserstein: num_directions must be >= 1, got {num_directions}")
  directions = _unit_directions(x.shape[1], num_directions, seed)
  px, py = x @ directions.T, y @ directions.T
  return float(np.mean([stats.wasserstein_distance(px[:, j], py[:, j])
                        for j in range(num_directions)]))


def sphere_abs_projection_mean(dim: int) -> float:
  """E|theta_1| for theta uniform on the unit sphere of R^dim.

  It is Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)), ~ sqrt(2 / (pi d)) for large d; so
  E_theta |<theta, a - b>| = this * ||a - b||, the sliced W1 of point masses at a and b.
  """
  if dim < 1:
    raise ValueError(f"sphere_abs_projection_mean: dim must be >= 1, got {dim}")
  log_ratio = special.gammaln(dim / 2) - special.gammaln((dim + 1) / 2)
  return float(np.exp(log_ratio) / math.sqrt(math.pi))


def log_log_slope(x: Any, y: Any) -> float:
  """Least-squares slope of log y against log x: the exponent p of a power law y ~ x^p.

  NaN when fewer than two points are given or any x or y is not positive (a W1 of
  exactly zero, e.g. a periodic orbit whose period divides the window, has no exponent).
  """
  x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
  if x.size < 2 or np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(x * y)):
    return math.nan
  return float(np.polyfit(np.log(x), np.log(y), 1)[0])


class WindowComparison(NamedTuple):
  """Consecutive windows of iterates: W1 between their empirical measures vs travel.

  Pair i compares window i with window i + 1; distances are in the samples' units (for
  weight projections on directions of norm ~1, the weights' own distances over
  sqrt(num params) on average).
  """

  window_starts: np.ndarray   # (W,) first step of each window
  window_ends: np.ndarray     # (W,) last step of each window
  window_size: int            # rows per window
  coordinate_w1: np.ndarray   # (W-1, n) W1 of each coordinate's marginals
  mean_w1: np.ndarray         # (W-1,) mean over coordinates of coordinate_w1
  sliced_w1: np.ndarray       # (W-1,) sliced W1 of the n-dimensional samples
  travel_last: np.ndarray     # (W-1,) ||last iterate of window i+1 - last of window i||
  travel_mean: np.ndarray     # (W-1,) mean over cross-window pairs of ||X - Y|| (>= W1)
  separation: np.ndarray      # (W-1,) sliced_w1 / (E|theta_1| travel_mean), ~[0, 1]
  w1_slope: float             # log-log slope of mean_w1 vs the later window's first step
  travel_slope: float         # the same for travel_mean


def compare_windows(steps: Any, samples: Any, num_windows: int, start_fraction: float = 0.0,
                    *, num_directions: int = 128, seed: int = 0) -> WindowComparison:
  """Compares the empirical measures of consecutive windows with the travel between them.

  The iterates with step >= start_fraction * (last step) are cut into `num_windows`
  consecutive windows of equal size (the earliest `rows mod num_windows` of them left
  out). For each pair of consecutive windows it measures the W1 distance between their
  empirical measures (per coordinate and sliced, the same directions for every pair)
  and how far the iterates moved between them: the norm of the difference of the two
  windows' last iterates, and the mean of ||X - Y|| over all cross-window pairs, which
  bounds every coordinate's W1 from above (and, times E|theta_1|, the sliced W1 in
  expectation over its directions).

  Reading the result. Windows sampled from one measure have W1 at the sampling-noise
  floor, ~ window_size^(-1/2) times the spread, while the travel stays at the spread:
  `separation` near 0 and `travel_slope` near 0. The paper's picture (weights move, their
  measure converges) is `separation` small, falling or flat at the floor
  (`w1_slope` <= 0), with `travel_slope` ~ 0. Drift (a measure not yet converged) gives
  `separation` near 1; convergence to a point gives W1 and travel shrinking together
  (`w1_slope` ~ `travel_slope` < 0).

  Args:
    steps: (T,) strictly increasing steps of the recorded iterates.
    samples: (T, n) iterates (e.g. weight projections), one row per step.
    num_windows: number of windows, >= 2.
    start_fraction: in [0, 1): leave out the iterates before this fraction of the last step.
    num_directions: directions of the sliced W1.
    seed: seed of those directions.
  """
  name = "compare_windows"
  samples = _sample_2d(samples, name, "samples")
  steps, windows = _equal_windows(steps, samples.shape[0], num_windows, start_fraction,
                                  name, min_size=1)
  parts = [samples[w] for w in windows]
  coordinate_w1, sliced, travel_last, travel_mean = [], [], [], []
  for x, y in zip(parts[:-1], parts[1:]):
    coordinate_w1.append([stats.wasserstein_distance(x[:, j], y[:, j])
                          for j in range(x.shape[1])])
    sliced.append(sliced_wasserstein(x, y, num_directions=num_directions, seed=seed))
    travel_last.append(np.linalg.norm(y[-1] - x[-1]))
    travel_mean.append(_mean_pair_distance(x, y))
  coordinate_w1 = np.asarray(coordinate_w1, dtype=np.float64)
  mean_w1 = coordinate_w1.mean(axis=1)
  sliced = np.asarray(sliced, dtype=np.float64)
  travel_mean = np.asarray(travel_mean, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    separation = sliced / (sphere_abs_projection_mean(samples.shape[1]) * travel_mean)
  separation = np.where(travel_mean > 0, separation, np.nan)
  starts = np.asarray([steps[w][0] for w in windows])
  ends = np.asarray([steps[w][-1] for w in windows])
  return WindowComparison(
      window_starts=starts, window_ends=ends, window_size=len(windows[0]),
      coordinate_w1=coordinate_w1, mean_w1=mean_w1, sliced_w1=sliced,
      travel_last=np.asarray(travel_last, dtype=np.float64), travel_mean=travel_mean,
      separation=separation, w1_slope=log_log_slope(starts[1:], mean_w1),
      travel_slope=log_log_slope(starts[1:], travel_mean))


def separation(x: Any, y: Any, *, num_directions: int = 128, seed: int = 0) -> float:
  """Sliced W1 between two samples' empirical measures over its bound from the mean
  distance between their points (as `compare_windows`): ~0 one measure, ~1 disjoint."""
  x, y = _sample_2d(x, "separation", "x"), _sample_2d(y, "separation", "y")
  travel = _mean_pair_distance(x, y)
  if travel <= 0:
    return float("nan")
  sliced = sliced_wasserstein(x, y, num_directions=num_directions, seed=seed)
  return float(sliced / (sphere_abs_projection_mean(x.shape[1]) * travel))


def separation_by_lag(windows: Sequence[Any], **kwargs) -> np.ndarray:
  """(W-1,) mean `separation` over every pair of windows (in time order) `lag` apart, for
  lag = 1, ..., W-1. Flat in the lag once windows sample one measure; rising while the
  measure still drifts or spreads (windows further apart in time are further apart)."""
  parts = [_sample_2d(w, "separation_by_lag", "windows") for w in windows]
  if len(parts) < 2:
    raise ValueError(f"separation_by_lag: needs at least 2 windows, got {len(parts)}")
  return np.asarray([np.mean([separation(parts[i], parts[i + lag], **kwargs)
                              for i in range(len(parts) - lag)])
                     for lag in range(1, len(parts))], dtype=np.float64)


def autocorrelation_time(samples: Any, c: float = 5.0) -> float:
  """Integrated autocorrelation time, in rows, of a (T,) or (T, n) series (columns
  averaged): 1 + 2 sum of the autocorrelations up to Sokal's self-consistent window, the
  first M >= c * tau(M). 1 for independent rows; NaN for fewer than 4 rows."""
  x = np.asarray(samples, dtype=np.float64)
  x = x[:, None] if x.ndim == 1 else x
  t = x.shape[0]
  if t < 4:
    return float("nan")
  x = x - x.mean(axis=0)
  size = 1 << (2 * t - 1).bit_length()
  spectrum = np.fft.rfft(x, n=size, axis=0)
  acf = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:t].mean(axis=1)
  if acf[0] <= 0:
    return float("nan")
  rho = acf / acf[0]
  taus = 2 * np.cumsum(rho) - 1
  window = np.arange(t)
  ok = window >= c * taus
  return float(taus[np.argmax(ok)] if ok.any() else taus[-1])


def interleaved_separation(samples: Any, block_rows: int, **kwargs) -> float:
  """`separation` between the two halves of one window of iterates made of alternate
  blocks of `block_rows` consecutive rows: the statistic's value when both halves sample
  one measure, with the window's own correlation kept inside each block."""
  samples = _sample_2d(samples, "interleaved_separation", "samples")
  blocks = samples.shape[0] // block_rows
  if block_rows < 1 or blocks < 4:
    return float("nan")
  parts = samples[:blocks * block_rows].reshape(blocks, block_rows, -1)
  return separation(parts[0::2].reshape(-1, samples.shape[1]),
                    parts[1::2].reshape(-1, samples.shape[1]), **kwargs)


def batch_means_stderr(values: Any, num_batches: int = 5) -> float:
  """Standard error of the mean of a correlated series: the spread of `num_batches`
  contiguous batch means over sqrt(num_batches) (NaN with fewer rows than batches)."""
  values = np.asarray(values, dtype=np.float64)
  size = len(values) // num_batches
  if size < 1:
    return float("nan")
  means = values[len(values) - size * num_batches:].reshape(num_batches, size).mean(axis=1)
  return float(means.std(ddof=1) / np.sqrt(num_batches))


class Fluctuation(NamedTuple):
  """One scalar series in equal windows: how it fluctuates and how its average settles."""

  window_starts: np.ndarray     # (W,) first step of each window
  window_ends: np.ndarray       # (W,) last step of each window
  window_means: np.ndarray      # (W,) mean of the values in each window (the batch means)
  window_stds: np.ndarray       # (W,) standard deviation of the values in each window
  birkhoff_at_ends: np.ndarray  # (W,) Birkhoff average of the analysed rows up to each window's end
  birkhoff_stderr: float        # batch-means standard error of the final Birkhoff average
  relative_changes: np.ndarray  # (W-1,) (A_{w+1} - A_w) / |A_w| between window ends
  fluctuation: float            # last window's coefficient of variation, std / |mean|
  average_change: float         # |relative_changes[-1]|


def fluctuation_and_averages(steps: Any, values: Any, num_windows: int,
                             start_fraction: float = 0.0) -> Fluctuation:
  """Per-window fluctuation of a scalar series against the convergence of its time average.

  The rows with step >= start_fraction * (last step) are cut into `num_windows` equal
  windows (the earliest `rows mod num_windows` left out, at least 2 rows per window);
  the Birkhoff average runs over the rows analysed, from the first window's start. The
  standard error is the batch-means one of `invmeasure.diagnostics.time_average` (the
  spread of the window means over sqrt(num_windows)), which allows for correlation
  within a window.

  Deciding "the values keep fluctuating while their time average converges": compare
  `fluctuation` (last window's std / |mean|, how much one iterate's value varies) with
  `average_change` (how much the Birkhoff average moved, relatively, over the last
  window); `fluctuates_while_average_converges` says yes when the first is at least
  `factor` times the second. For an i.i.d. series the ratio grows like
  num_windows * sqrt(window size); for a series converging to a value both shrink
  and the ratio stays O(1).

  Args:
    steps: (T,) strictly increasing steps.
    values: (T,) the observable at each step.
    num_windows: number of windows, >= 2.
    start_fraction: in [0, 1): leave out the rows before this fraction of the last step.
  """
  name = "fluctuation_and_averages"
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1:
    raise ValueError(f"{name}: values must be one scalar series of shape (T,), got shape "
                     f"{values.shape}")
  _check_finite(values, name, "values")
  steps, windows = _equal_windows(steps, values.shape[0], num_windows, start_fraction, name,
                                  min_size=2)
  analysed = values[windows[0][0]:windows[-1][-1] + 1]
  size = len(windows[0])
  window_means, stderr = _batch_means(analysed, num_windows)
  window_stds = analysed.reshape(num_windows, size).std(axis=1)
  averages = birkhoff_averages(analysed)[size - 1::size]
  with np.errstate(divide="ignore", invalid="ignore"):
    changes = np.diff(averages) / np.abs(averages[:-1])
    fluctuation = window_stds[-1] / abs(window_means[-1])
  return Fluctuation(
      window_starts=np.asarray([steps[w][0] for w in windows]),
      window_ends=np.asarray([steps[w][-1] for w in windows]),
      window_means=window_means, window_stds=window_stds, birkhoff_at_ends=averages,
      birkhoff_stderr=stderr, relative_changes=changes, fluctuation=float(fluctuation),
      average_change=float(abs(changes[-1])))


def fluctuates_while_average_converges(result: Fluctuation, factor: float = 10.0) -> bool:
  """Whether the last window's coefficient of variation is >= `factor` x the last relative
  change of the Birkhoff average (see `fluctuation_and_averages`)."""
  return bool(result.fluctuation >= factor * result.average_change)


def weight_ball_radius(initial_norm: float, max_grad_norm: float, weight_decay: float,
                       learning_rate: float) -> float:
  """Radius R = max(||x_0||, G / lambda) of the ball that SGD with L2 weight decay stays in.

  Theorem 4.3 for x_{t+1} = (1 - eta lambda) x_t - eta g_t with ||g_t|| <= G:
  ||x_{t+1}|| <= (1 - eta lambda) ||x_t|| + eta G (needs eta lambda <= 1), and if ||x_t|| <= R
  with G <= lambda R this is <= (1 - eta lambda) R + eta lambda R = R; induction from x_0.
  Here G is measured (the largest minibatch gradient norm of f observed, e.g. the
  `minibatch_grad_norm` of the diagnostic rows), so the check is empirical: it holds
  along the run when no unobserved step had a larger gradient. It is for SGD without
  momentum (a learning-rate schedule is fine when `learning_rate` is its largest value).

  Raises:
    ValueError: naming the argument, when weight_decay <= 0, learning_rate <= 0,
      learning_rate * weight_decay > 1, or a norm is negative.
  """
  if weight_decay <= 0:
    raise ValueError(f"weight_ball_radius: weight_decay must be > 0 for a bounded ball, got "
                     f"{weight_decay}")
  if learning_rate <= 0:
    raise ValueError(f"weight_ball_radius: learning_rate must be > 0, got {learning_rate}")
  if learning_rate * weight_decay > 1:
    raise ValueError(f"weight_ball_radius: learning_rate * weight_decay = "
                     f"{learning_rate * weight_decay:g} > 1; the ball needs eta * lambda <= 1")
  if initial_norm < 0 or max_grad_norm < 0:
    raise ValueError(f"weight_ball_radius: initial_norm ({initial_norm}) and max_grad_norm "
                     f"({max_grad_norm}) must be >= 0")
  return float(max(initial_norm, max_grad_norm / weight_decay))


class UpdateBalance(NamedTuple):
  """Equation (10) in the update's terms, valid for any optimizer.

  At an invariant measure E[F(x + u) - F(x)] = 0; to second order
  F(x + u) - F(x) ~ <grad F, u> + (1/2)(s_u + lambda) ||u||^2 with s_u the sharpness of f
  along u, so E[-<grad F, u>] (lhs) = E[(1/2)(s_u + lambda) ||u||^2] (rhs).
  """

  steps: np.ndarray          # (R,) steps of the rows used
  lhs: np.ndarray            # (R,) update_descent = -<grad F, u>
  rhs: np.ndarray            # (R,) 0.5 (update_sharpness + lambda) diagnostic_update_norm^2
  gain: np.ndarray           # (R,) rhs - lhs: second-order estimate of F(x + u) - F(x)
  lhs_mean: float            # time averages over the rows used
  rhs_mean: float
  ratio: float               # rhs_mean / lhs_mean, 1 at an invariant measure
  gain_mean: float           # Birkhoff average of the gain
  gain_stderr: float         # its batch-means standard error (NaN with too few rows)
  relative_gain: float       # gain_mean / |lhs_mean|
  relative_gain_stderr: float  # gain_stderr / |lhs_mean|


class PaperBalance(NamedTuple):
  """Equation (10) as the paper writes it: E||grad f||^2 ~ (eta/2) E[s_u ||g_B||^2]."""

  steps: np.ndarray          # (R,) steps of the rows used
  lhs: np.ndarray            # (R,) grad_norm^2 (biased up by noise^2 / K)
  lhs_unbiased: np.ndarray   # (R,) grad_norm_sq_unbiased, NaN where a row lacks it
  rhs: np.ndarray            # (R,) (eta_eff / 2) update_sharpness minibatch_grad_norm^2
  eta_eff: np.ndarray        # (R,) learning rate / (1 - momentum)
  lhs_mean: float
  lhs_unbiased_mean: float   # NaN when some row lacks grad_norm_sq_unbiased
  rhs_mean: float
  ratio: float               # rhs_mean / lhs_mean
  ratio_unbiased: float      # rhs_mean / lhs_unbiased_mean


class Equation10(NamedTuple):
  """Both forms of equation (10), each over the rows that carry its fields."""

  update: UpdateBalance
  paper: PaperBalance


UPDATE_FIELDS = ("update_descent", "diagnostic_update_norm")
PAPER_FIELDS = ("grad_norm", "minibatch_grad_norm")


def equation10(rows: Sequence[Mapping[str, Any]], weight_decay: float,
               learning_rate: float | None = None, momentum: float = 0.0, *,
               start_fraction: float = 0.0, num_windows: int = 10,
               sharpness_field: str = "update_sharpness") -> Equation10:
  """The two sides of equation (10) per metric row, their time averages and balance.

  The update form (`UpdateBalance`) holds for any optimizer, u being its update from one
  minibatch; the paper's form (`PaperBalance`) is its SGD case u = -eta_eff g_B divided
  by eta_eff, with the heavy-ball effective rate eta_eff = lr / (1 - momentum) and the
  sharpness along u standing for the sharpness along g_B (they differ by the weight
  decay term in u). A form is computed on the rows that carry all its fields with finite
  values (`lr` too for the paper's form when `learning_rate` is None), from
  start_fraction of its last step on, since the balance holds only once the iterates
  sample the invariant measure; a form no row carries has empty arrays and NaN averages.

  Args:
    rows: metric rows (`runs.load_run(workdir).rows`).
    weight_decay: lambda of F = f + lambda/2 ||x||^2.
    learning_rate: eta for the paper's form; None uses each row's `lr`.
    momentum: heavy-ball momentum, in [0, 1).
    start_fraction: in [0, 1): leave out the rows before this fraction of the last step.
    num_windows: windows of the batch-means standard error of the gain.
    sharpness_field: the row field of s_u. `update_sharpness_independent` (measured with
      a Hessian from a minibatch other than the update's) is unbiased for the full
      Hessian; `update_sharpness` (the update's own minibatch) is biased up along it.
  """
  name = "equation10"
  if weight_decay < 0:
    raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay}")
  if not 0 <= momentum < 1:
    raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}")
  if learning_rate is not None and learning_rate <= 0:
    raise ValueError(f"{name}: learning_rate must be > 0 or None, got {learning_rate}")
  if int(num_windows) != num_windows or num_windows < 2:
    raise ValueError(f"{name}: num_windows must be an integer >= 2, got {num_windows}")
  _check_start_fraction(start_fraction, name)

  columns = _columns(rows, UPDATE_FIELDS + (sharpness_field,), start_fraction)
  steps = columns["step"]
  lhs = columns["update_descent"]
  rhs = 0.5 * (columns[sharpness_field] + weight_decay) * columns["diagnostic_update_norm"] ** 2
  gain = rhs - lhs
  lhs_mean, rhs_mean, gain_mean = _mean(lhs), _mean(rhs), _mean(gain)
  gain_stderr = _batch_means(gain, num_windows)[1] if gain.size >= max(num_windows, 2) else math.nan
  update = UpdateBalance(
      steps=steps, lhs=lhs, rhs=rhs, gain=gain, lhs_mean=lhs_mean, rhs_mean=rhs_mean,
      ratio=_divide(rhs_mean, lhs_mean), gain_mean=gain_mean, gain_stderr=gain_stderr,
      relative_gain=_divide(gain_mean, abs(lhs_mean)),
      relative_gain_stderr=_divide(gain_stderr, abs(lhs_mean)))

  fields = PAPER_FIELDS + (sharpness_field,) + (("lr",) if learning_rate is None else ())
  columns = _columns(rows, fields, start_fraction, optional=("grad_norm_sq_unbiased",))
  lr = columns["lr"] if learning_rate is None else np.full(columns["step"].shape, learning_rate)
  eta_eff = lr / (1.0 - momentum)
  lhs = columns["grad_norm"] ** 2
  lhs_unbiased = columns["grad_norm_sq_unbiased"]
  rhs = 0.5 * eta_eff * columns[sharpness_field] * columns["minibatch_grad_norm"] ** 2
  lhs_mean, lhs_unbiased_mean, rhs_mean = _mean(lhs), _mean(lhs_unbiased), _mean(rhs)
  paper = PaperBalance(
      steps=columns["step"], lhs=lhs, lhs_unbiased=lhs_unbiased, rhs=rhs, eta_eff=eta_eff,
      lhs_mean=lhs_mean, lhs_unbiased_mean=lhs_unbiased_mean, rhs_mean=rhs_mean,
      ratio=_divide(rhs_mean, lhs_mean), ratio_unbiased=_divide(rhs_mean, lhs_unbiased_mean))
  return Equation10(update=update, paper=paper)


# ---------------------------------------------------------------------------- helpers


def _check_finite(values: np.ndarray, caller: str, what: str) -> None:
  """Raises a one-line ValueError locating the first NaN or infinite entry."""
  bad = ~np.isfinite(values)
  if bad.any():
    first = np.unravel_index(int(np.argmax(bad)), values.shape)
    raise ValueError(f"{caller}: {what} has {int(bad.sum())} NaN or infinite entries (the "
                     f"first at index {tuple(int(i) for i in first)}); drop or fill them first")


def _check_start_fraction(start_fraction: float, caller: str) -> None:
  if not 0.0 <= start_fraction < 1.0:
    raise ValueError(f"{caller}: start_fraction must be in [0, 1), got {start_fraction}")


def _sample_1d(values: Any, what: str) -> np.ndarray:
  """A non-empty, finite 1-D float64 sample."""
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"wasserstein_1d: {what} must be a non-empty 1-D sample, got shape "
                     f"{values.shape}")
  _check_finite(values, "wasserstein_1d", what)
  return values


def _sample_2d(values: Any, caller: str, what: str) -> np.ndarray:
  """A non-empty, finite (rows, dims) float64 sample."""
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 2 or 0 in values.shape:
    raise ValueError(f"{caller}: {what} must be a non-empty (rows, dims) array, got shape "
                     f"{values.shape}")
  _check_finite(values, caller, what)
  return values


def _unit_directions(dim: int, num: int, seed: int) -> np.ndarray:
  """(num, dim) directions uniform on the unit sphere."""
  directions = np.random.default_rng(seed).standard_normal((num, dim))
  return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _mean_pair_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Mean of ||x_i - y_j|| over all pairs, a block of rows of x at a time."""
  rows = max(1, _PAIR_CHUNK // y.shape[0])
  total = sum(spatial.distance.cdist(x[i:i + rows], y).sum() for i in range(0, len(x), rows))
  return float(total / (x.shape[0] * y.shape[0]))


def _equal_windows(steps: Any, num_rows: int, num_windows: int, start_fraction: float,
                   caller: str, min_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
  """The steps and the row indices of `num_windows` equal consecutive windows."""
  steps = np.asarray(steps, dtype=np.float64)
  if steps.ndim != 1 or steps.shape[0] != num_rows:
    raise ValueError(f"{caller}: steps must have shape ({num_rows},), one per row, got "
                     f"{steps.shape}")
  _check_finite(steps, caller, "steps")
  if num_rows and np.any(np.diff(steps) <= 0):
    raise ValueError(f"{caller}: steps must be strictly increasing (first break at index "
                     f"{int(np.argmax(np.diff(steps) <= 0)) + 1})")
  if int(num_windows) != num_windows or num_windows < 2:
    raise ValueError(f"{caller}: num_windows must be an integer >= 2, got {num_windows}")
  _check_start_fraction(start_fraction, caller)
  first = int(np.searchsorted(steps, start_fraction * steps[-1], side="left")) if num_rows else 0
  count = num_rows - first
  size = count // num_windows
  if size < min_size:
    raise ValueError(f"{caller}: {count} rows from start_fraction={start_fraction} on give "
                     f"fewer than {min_size} per window for num_windows={num_windows}; lower "
                     "num_windows or start_fraction")
  first += count - size * num_windows
  return steps, [np.arange(first + w * size, first + (w + 1) * size) for w in range(num_windows)]


@functools.lru_cache(maxsize=32)
def _batch_means_fn(window: int, num_windows: int) -> Callable:
  """A jitted pass of `time_average(window, num_windows)` over a whole series."""
  accumulator = time_average(window, num_windows)

  def run(series: jax.Array):
    state, _ = jax.lax.scan(lambda s, x: (accumulator.update(s, x), None),
                            accumulator.init(series[0]), series)
    summary = accumulator.summarize(state)
    return summary.window_means, summary.window_stderr

  return jax.jit(run)


def _batch_means(values: np.ndarray, num_windows: int) -> tuple[np.ndarray, float]:
  """Means of `num_windows` equal windows of the last rows, and their batch-means stderr."""
  window = values.shape[0] // num_windows
  trailing = values[values.shape[0] - window * num_windows:]
  # Centred in float64 first: the accumulator may run in float32 and the spread of the
  # window means is shift-invariant.
  centre = float(trailing.mean())
  means, stderr = _batch_means_fn(window, num_windows)(jnp.asarray(trailing - centre))
  return np.asarray(means, dtype=np.float64) + centre, float(stderr)


def _columns(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], start_fraction: float,
             optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """Float columns of `step` and `fields` over the rows carrying all of them finitely,
  from start_fraction of their last step on; `optional` fields are NaN where absent."""
  kept = [row for row in rows
          if all(_finite(row.get(field)) for field in ("step",) + tuple(fields))]
  if kept:
    threshold = start_fraction * float(kept[-1]["step"])
    kept = [row for row in kept if float(row["step"]) >= threshold]
  columns = {field: np.asarray([float(row[field]) for row in kept], dtype=np.float64)
             for field in ("step",) + tuple(fields)}
  for field in optional:
    columns[field] = np.asarray(
        [float(row[field]) if _finite(row.get(field)) else math.nan for row in kept],
        dtype=np.float64)
  return columns


def _finite(value: Any) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _mean(values: np.ndarray) -> float:
  """Plain mean (the Birkhoff average over all of the values); NaN when empty."""
  return float(values.mean()) if values.size else math.nan


def _divide(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator != 0 and math.isfinite(denominator) else math.nan
