"""Tests of the invariant-measure analysis against values computed independently by hand.

Inputs are fresh random draws (the `seed` fixture prints the seed); every statistical
tolerance is stated next to its check as a multiple of the estimate's standard deviation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sp_stats

from invmeasure.analysis import invariant as inv
from invmeasure.analysis import invariant_figures as figs

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ Birkhoff averages


def test_birkhoff_average_of_a_periodic_sequence(seed):
  rng = np.random.default_rng(seed)
  period = int(rng.integers(2, 10))
  cycle = rng.normal(size=(period, 3))
  repeats = 37
  values = np.tile(cycle, (repeats, 1))
  averages = inv.birkhoff_averages(values)
  assert averages.shape == values.shape
  t = np.arange(1, values.shape[0] + 1)
  at_multiples = t % period == 0
  np.testing.assert_allclose(averages[at_multiples],
                             np.broadcast_to(cycle.mean(axis=0), (repeats, 3)),
                             rtol=1e-12, atol=1e-12)
  # |A_t - period mean| = |partial cycle sum - r mean| / t <= (max - min) p / t.
  bound = (cycle.max(axis=0) - cycle.min(axis=0)) * period / t[:, None]
  assert np.all(np.abs(averages - cycle.mean(axis=0)) <= bound + 1e-12)
  # First entry is the first value, the t-th the mean of the first t.
  np.testing.assert_allclose(averages[0], values[0])
  k = int(rng.integers(1, values.shape[0]))
  np.testing.assert_allclose(averages[k - 1], values[:k].mean(axis=0), rtol=1e-12)


def test_birkhoff_averages_reject_nan_and_scalars():
  with pytest.raises(ValueError, match=r"birkhoff_averages: values has 2 NaN or infinite "
                     r"entries \(the first at index \(3,\)\)"):
    inv.birkhoff_averages([1.0, 2.0, 3.0, np.nan, np.inf])
  with pytest.raises(ValueError, match="birkhoff_averages: values is a scalar"):
    inv.birkhoff_averages(1.0)


# ----------------------------------------------------------------- Wasserstein distances


def test_w1_of_point_masses_and_of_a_shift(seed):
  rng = np.random.default_rng(seed)
  a, b = rng.normal(size=2)
  # Point masses, as samples of different sizes.
  assert inv.wasserstein_1d(np.full(3, a), np.full(7, b)) == pytest.approx(abs(a - b), rel=1e-12)
  sample = rng.normal(size=int(rng.integers(5, 200)))
  shift = float(rng.normal(scale=3.0))
  assert inv.wasserstein_1d(sample, sample + shift) == pytest.approx(abs(shift), rel=1e-9)
  assert inv.wasserstein_1d(sample, rng.permutation(sample)) == pytest.approx(0.0, abs=1e-12)


def test_w1_of_scaled_gaussian_samples_matches_quantile_and_cdf_formulas(seed):
  rng = np.random.default_rng(seed)
  scale = float(rng.uniform(0.3, 3.0))
  a = rng.standard_normal(500)
  b = scale * rng.standard_normal(500)
  # Equal sizes: W1 = mean |a_(i) - b_(i)| over the sorted samples.
  expected = np.mean(np.abs(np.sort(a) - np.sort(b)))
  assert inv.wasserstein_1d(a, b) == pytest.approx(expected, rel=1e-10)
  # Unequal sizes: W1 = integral |F_a - F_b| over the merged support.
  c = scale * rng.standard_normal(313)
  grid = np.sort(np.concatenate([a, c]))
  cdf_a = np.searchsorted(np.sort(a), grid[:-1], side="right") / a.size
  cdf_c = np.searchsorted(np.sort(c), grid[:-1], side="right") / c.size
  expected = np.sum(np.abs(cdf_a - cdf_c) * np.diff(grid))
  assert inv.wasserstein_1d(a, c) == pytest.approx(expected, rel=1e-10)


def test_w1_rejects_bad_samples():
  with pytest.raises(ValueError, match=r"wasserstein_1d: b must be a non-empty 1-D sample"):
    inv.wasserstein_1d([1.0], np.zeros((2, 2)))
  with pytest.raises(ValueError, match="wasserstein_1d: a has 1 NaN or infinite"):
    inv.wasserstein_1d([1.0, np.nan], [1.0])


def test_sphere_abs_projection_mean_known_values():
  # d = 1: |+-1|; d = 2: E|cos| = 2/pi; d = 3: uniform theta_1 on [-1, 1] (Archimedes).
  assert inv.sphere_abs_projection_mean(1) == pytest.approx(1.0, rel=1e-12)
  assert inv.sphere_abs_projection_mean(2) == pytest.approx(2 / math.pi, rel=1e-12)
  assert inv.sphere_abs_projection_mean(3) == pytest.approx(0.5, rel=1e-12)
  # Large d: ~ sqrt(2 / (pi d)).
  assert inv.sphere_abs_projection_mean(10_000) == pytest.approx(
      math.sqrt(2 / (math.pi * 10_000)), rel=1e-3)


def test_sliced_w1_of_a_shifted_cloud_is_the_mean_absolute_projection_of_the_shift(seed):
  rng = np.random.default_rng(seed)
  dim = int(rng.integers(2, 8))
  x = rng.standard_normal((300, dim))
  shift = rng.normal(size=dim)
  num_directions = 400
  got = inv.sliced_wasserstein(x, x + shift, num_directions=num_directions,
                               seed=int(rng.integers(1 << 30)))
  # Each projection is shifted by <theta, c>, so W1 = |<theta, c>| exactly and the
  # estimate is a mean of |theta_1| ||c||: E|theta_1| = Gamma(d/2) / (sqrt(pi)
  # Gamma((d+1)/2)), Var|theta_1| = 1/d - E^2. Five standard deviations of the mean.
  mean_abs = math.gamma(dim / 2) / (math.sqrt(math.pi) * math.gamma((dim + 1) / 2))
  sd = math.sqrt((1 / dim - mean_abs ** 2) / num_directions) * np.linalg.norm(shift)
  assert abs(got - mean_abs * np.linalg.norm(shift)) < 5 * sd
  assert inv.sliced_wasserstein(x, rng.permutation(x), seed=3) == pytest.approx(0.0, abs=1e-12)
  # Same seed, same directions: symmetric and repeatable.
  y = rng.standard_normal((41, dim))
  assert inv.sliced_wasserstein(x, y, seed=5) == pytest.approx(inv.sliced_wasserstein(y, x, seed=5))


def test_sliced_w1_rejects_mismatched_dimensions():
  with pytest.raises(ValueError, match=r"x has dimension 3 and y has 2"):
    inv.sliced_wasserstein(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"sliced_wasserstein: y must be a non-empty \(rows, dims\)"):
    inv.sliced_wasserstein(np.zeros((4, 3)), np.zeros(3))


def test_log_log_slope():
  x = np.array([1.0, 2.0, 4.0, 8.0])
  assert inv.log_log_slope(x, 3 * x ** -0.5) == pytest.approx(-0.5)
  assert math.isnan(inv.log_log_slope(x, np.array([1.0, 0.0, 1.0, 1.0])))
  assert math.isnan(inv.log_log_slope(x[:1], x[:1]))


# ---------------------------------------------------------------------- compare_windows


def test_compare_windows_by_hand(seed):
  rng = np.random.default_rng(seed)
  steps = np.cumsum(rng.integers(1, 5, size=30))
  samples = rng.normal(size=(30, 3))
  start_fraction = 0.3
  result = inv.compare_windows(steps, samples, 4, start_fraction, num_directions=16, seed=7)
  kept = np.flatnonzero(steps >= start_fraction * steps[-1])
  size = kept.size // 4
  kept = kept[kept.size - 4 * size:]  # the earliest rows mod 4 are left out
  windows = [samples[kept[w * size:(w + 1) * size]] for w in range(4)]
  assert result.window_size == size
  np.testing.assert_array_equal(result.window_starts, steps[kept[::size]])
  np.testing.assert_array_equal(result.window_ends, steps[kept[size - 1::size]])
  for i, (x, y) in enumerate(zip(windows[:-1], windows[1:])):
    w1 = np.abs(np.sort(x, axis=0) - np.sort(y, axis=0)).mean(axis=0)
    np.testing.assert_allclose(result.coordinate_w1[i], w1, rtol=1e-10)
    assert result.mean_w1[i] == pytest.approx(w1.mean(), rel=1e-10)
    assert result.travel_last[i] == pytest.approx(np.linalg.norm(y[-1] - x[-1]), rel=1e-12)
    pairs = [np.linalg.norm(a - b) for a in x for b in y]
    assert result.travel_mean[i] == pytest.approx(np.mean(pairs), rel=1e-10)
    # The mean pair distance bounds each coordinate's W1 (independent coupling).
    assert np.all(w1 <= result.travel_mean[i])
    sliced = inv.sliced_wasserstein(x, y, num_directions=16, seed=7)
    assert result.sliced_w1[i] == pytest.approx(sliced, rel=1e-12)
    assert result.separation[i] == pytest.approx(
        sliced / (inv.sphere_abs_projection_mean(3) * np.mean(pairs)), rel=1e-10)


def test_compare_windows_stationary_w1_shrinks_like_inverse_sqrt_window(seed):
  rng = np.random.default_rng(seed)
  num_rows, dim = 4000, 8
  samples = rng.standard_normal((num_rows, dim))
  steps = 10 * np.arange(1, num_rows + 1)
  # Two independent samples of size m from N(0, 1): sqrt(m) E W1 -> (2/sqrt(pi))
  # integral sqrt(Phi (1 - Phi)) dx = 1.822 (Brownian bridge limit).
  constant = 2 / math.sqrt(math.pi) * integrate.quad(
      lambda s: math.sqrt(sp_stats.norm.cdf(s) * sp_stats.norm.sf(s)), -np.inf, np.inf)[0]
  # E||X - Y|| for X, Y independent N(0, I_d): 2 Gamma((d+1)/2) / Gamma(d/2).
  pair_distance = 2 * math.gamma((dim + 1) / 2) / math.gamma(dim / 2)
  few = inv.compare_windows(steps, samples, 4, num_directions=32)      # m = 1000
  many = inv.compare_windows(steps, samples, 40, num_directions=32)    # m = 100
  assert few.window_size == 1000 and many.window_size == 100
  # Each coordinate's W1 has relative sd 0.35; 24 (resp. 312) of them are averaged, so
  # the bands are about 4.5 sd wide.
  assert few.mean_w1.mean() * math.sqrt(1000) == pytest.approx(constant, rel=0.3)
  assert many.mean_w1.mean() * math.sqrt(100) == pytest.approx(constant, rel=0.12)
  assert 2.2 < many.mean_w1.mean() / few.mean_w1.mean() < 4.5
  # The travel does not shrink: it is the spread of the measure at every window size.
  for result in (few, many):
    assert result.travel_mean.mean() == pytest.approx(pair_distance, rel=0.05)
    assert abs(result.travel_slope) < 0.1
  # Every projection of N(0, I) is N(0, 1), so sliced W1 ~ 1.82 / sqrt(m) against
  # E|theta_1| E||X - Y|| = 0.291 * 3.88: separation ~ 1.6 / sqrt(m), 0.05 for m = 1000
  # and 0.16 for m = 100 (over 20 seeds: at most 0.07 and 0.17).
  assert few.separation.max() < 0.1
  assert many.separation.mean() < 0.25


def test_compare_windows_drift_and_convergence_to_a_point(seed):
  rng = np.random.default_rng(seed)
  num_rows, dim = 2000, 4
  steps = np.arange(1, num_rows + 1)
  direction = rng.normal(size=dim)
  noise = rng.standard_normal((num_rows, dim))
  # Drift: each window is the previous one translated by v, so the sliced W1 is
  # E|<theta, v>| and the mean travel E||v + X' - Y'|| ~ ||v||: separation ~ 1, up to
  # the directions' Monte Carlo error (sd 0.03 with 512 directions in R^4).
  drifting = inv.compare_windows(steps, np.outer(steps / 50.0, direction) + 0.1 * noise, 5,
                                 num_directions=512)
  assert drifting.separation.min() > 0.8
  # Converging to a point: W1 and travel shrink together, like t^(-1/2).
  shrinking = noise / np.sqrt(steps)[:, None]
  converging = inv.compare_windows(steps, shrinking, 8, start_fraction=0.1)
  assert converging.travel_slope < -0.3 and converging.w1_slope < -0.3
  stationary = inv.compare_windows(steps, noise, 8, start_fraction=0.1)
  assert abs(stationary.travel_slope) < 0.1


def test_compare_windows_errors():
  steps, samples = np.arange(10), np.zeros((10, 2))
  with pytest.raises(ValueError, match="compare_windows: num_windows must be an integer >= 2"):
    inv.compare_windows(steps, samples, 1)
  with pytest.raises(ValueError, match=r"compare_windows: 10 rows .* fewer than 1 per window "
                     r"for num_windows=11"):
    inv.compare_windows(steps, samples, 11)
  with pytest.raises(ValueError, match=r"steps must be strictly increasing \(first break at "
                     r"index 5\)"):
    inv.compare_windows(np.r_[np.arange(5), np.arange(5)], samples, 2)
  with pytest.raises(ValueError, match=r"steps must have shape \(10,\)"):
    inv.compare_windows(np.arange(9), samples, 2)
  with pytest.raises(ValueError, match=r"start_fraction must be in \[0, 1\)"):
    inv.compare_windows(steps, samples, 2, start_fraction=1.0)
  samples[4, 1] = np.nan
  with pytest.raises(ValueError, match=r"compare_windows: samples has 1 NaN or infinite "
                     r"entries \(the first at index \(4, 1\)\)"):
    inv.compare_windows(steps, samples, 2)


# ------------------------------------------------------------- fluctuation_and_averages


def test_fluctuation_and_averages_by_hand(seed):
  rng = np.random.default_rng(seed)
  steps = 5 * np.arange(57)
  values = 3.0 + rng.normal(size=57) + 0.01 * np.arange(57)
  result = inv.fluctuation_and_averages(steps, values, 5, start_fraction=0.2)
  kept = np.flatnonzero(steps >= 0.2 * steps[-1])
  size = kept.size // 5
  kept = kept[kept.size - 5 * size:]
  windows = values[kept].reshape(5, size)
  np.testing.assert_array_equal(result.window_starts, steps[kept[::size]])
  np.testing.assert_array_equal(result.window_ends, steps[kept[size - 1::size]])
  # The window means come from the float32 accumulator: 1e-6 relative.
  np.testing.assert_allclose(result.window_means, windows.mean(axis=1), rtol=1e-6)
  np.testing.assert_allclose(result.window_stds, windows.std(axis=1), rtol=1e-12)
  ends = np.cumsum(values[kept])[size - 1::size] / np.arange(size, 5 * size + 1, size)
  np.testing.assert_allclose(result.birkhoff_at_ends, ends, rtol=1e-12)
  stderr = windows.mean(axis=1).std(ddof=1) / math.sqrt(5)
  assert result.birkhoff_stderr == pytest.approx(stderr, rel=1e-4)
  np.testing.assert_allclose(result.relative_changes, np.diff(ends) / np.abs(ends[:-1]),
                             rtol=1e-12)
  assert result.fluctuation == pytest.approx(windows[-1].std() / abs(windows[-1].mean()))
  assert result.average_change == pytest.approx(abs(result.relative_changes[-1]))


def test_fluctuating_series_with_converging_average_vs_converging_series(seed):
  rng = np.random.default_rng(seed)
  steps = np.arange(1, 2001)
  # Stationary: cv ~ 0.29, last change of the average ~ 0.29 / (10 sqrt(200)) ~ 0.002.
  stationary = inv.fluctuation_and_averages(steps, 2.0 + rng.uniform(-1, 1, steps.size), 10)
  assert inv.fluctuates_while_average_converges(stationary)
  # Converging to a value: the spread within a window shrinks with the average's change.
  converging = inv.fluctuation_and_averages(steps, 1.0 + 1.0 / steps, 10)
  assert not inv.fluctuates_while_average_converges(converging)
  assert converging.window_stds[-1] < converging.window_stds[0]


def test_fluctuation_and_averages_errors():
  with pytest.raises(ValueError, match=r"values must be one scalar series of shape \(T,\)"):
    inv.fluctuation_and_averages(np.arange(10), np.zeros((10, 2)), 2)
  with pytest.raises(ValueError, match="fewer than 2 per window for num_windows=6"):
    inv.fluctuation_and_averages(np.arange(10), np.zeros(10), 6)


# ---------------------------------------------------------------------- Theorem 4.3 ball


def test_weight_ball_radius_numbers_and_errors():
  assert inv.weight_ball_radius(3.0, 2.0, 0.5, 0.1) == pytest.approx(4.0)
  assert inv.weight_ball_radius(5.0, 2.0, 0.5, 0.1) == pytest.approx(5.0)
  assert inv.weight_ball_radius(1.0, 2.0, 0.5, 2.0) == pytest.approx(4.0)  # eta lambda = 1
  with pytest.raises(ValueError, match="weight_ball_radius: weight_decay must be > 0"):
    inv.weight_ball_radius(1.0, 1.0, 0.0, 0.1)
  with pytest.raises(ValueError, match=r"learning_rate \* weight_decay = 2 > 1"):
    inv.weight_ball_radius(1.0, 1.0, 0.5, 4.0)
  with pytest.raises(ValueError, match="weight_ball_radius: learning_rate must be > 0"):
    inv.weight_ball_radius(1.0, 1.0, 0.5, 0.0)
  with pytest.raises(ValueError, match="max_grad_norm"):
    inv.weight_ball_radius(1.0, -1.0, 0.5, 0.1)


def test_sgd_with_weight_decay_stays_in_the_ball(seed):
  rng = np.random.default_rng(seed)
  dim, eta, lam = 6, 0.1, 0.05
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  hessian = q @ np.diag(rng.uniform(0.1, 2.0, dim)) @ q.T
  linear = rng.normal(size=dim) * 3
  x = rng.normal(size=dim)
  norms, grad_norms = [np.linalg.norm(x)], []
  for _ in range(3000):
    # Minibatch gradient of 0.5 x'Ax + b'x with bounded noise.
    g = hessian @ x + linear + rng.uniform(-2, 2, dim)
    grad_norms.append(np.linalg.norm(g))
    x = (1 - eta * lam) * x - eta * g
    norms.append(np.linalg.norm(x))
  radius = inv.weight_ball_radius(norms[0], max(grad_norms), lam, eta)
  assert max(norms) <= radius * (1 + 1e-12)

  # Gradients of norm G pointing inward everywhere push ||x|| up to G / lambda: the
  # radius is attained in the limit, so a smaller one would fail here.
  x, big_g = rng.normal(size=dim) * 0.01, 1.5
  radius = inv.weight_ball_radius(np.linalg.norm(x), big_g, lam, eta)
  norms = []
  for _ in range(4000):
    x = (1 - eta * lam) * x + eta * big_g * x / np.linalg.norm(x)
    norms.append(np.linalg.norm(x))
  assert radius == pytest.approx(big_g / lam)
  assert max(norms) <= radius * (1 + 1e-12)
  assert norms[-1] > 0.999 * radius


# ---------------------------------------------------------------------- equation (10)


def _diagnostic_row(step, lr, descent, sharpness, update_norm, grad_norm, minibatch_grad_norm,
                    unbiased=None):
  row = {"step": step, "epoch": step / 10, "lr": lr, "update_descent": descent,
         "update_sharpness": sharpness, "diagnostic_update_norm": update_norm,
         "grad_norm": grad_norm, "minibatch_grad_norm": minibatch_grad_norm}
  if unbiased is not None:
    row["grad_norm_sq_unbiased"] = unbiased
  return row


def test_equation10_on_hand_built_rows():
  rows = [
      {"step": 1, "epoch": 0.1, "lr": 0.1, "train_loss": 2.0},
      _diagnostic_row(10, 0.1, 2.0, 3.0, 1.0, 2.0, 4.0, unbiased=3.5),
      {"step": 11, "epoch": 1.1, "lr": 0.1, "train_loss": 1.5},
      _diagnostic_row(20, 0.1, 1.0, 1.0, 2.0, 1.0, 2.0, unbiased=0.5),
      _diagnostic_row(30, 0.05, float("nan"), 1.0, 2.0, 1.0, 2.0, unbiased=0.5),
      _diagnostic_row(40, 0.05, 0.5, 5.0, 0.5, 3.0, 1.0),
  ]
  result = inv.equation10(rows, weight_decay=1.0, momentum=0.5)
  update = result.update
  # rhs = 0.5 (s + lambda) ||u||^2: 0.5*4*1, 0.5*2*4, 0.5*6*0.25; row 30 has a NaN.
  np.testing.assert_array_equal(update.steps, [10, 20, 40])
  np.testing.assert_allclose(update.lhs, [2.0, 1.0, 0.5])
  np.testing.assert_allclose(update.rhs, [2.0, 4.0, 0.75])
  np.testing.assert_allclose(update.gain, [0.0, 3.0, 0.25])
  assert update.lhs_mean == pytest.approx(3.5 / 3)
  assert update.rhs_mean == pytest.approx(6.75 / 3)
  assert update.ratio == pytest.approx(6.75 / 3.5)
  assert update.gain_mean == pytest.approx(3.25 / 3)
  assert update.relative_gain == pytest.approx(3.25 / 3.5)
  assert math.isnan(update.gain_stderr)  # 3 rows, fewer than 10 windows
  paper = result.paper
  # eta_eff = lr / (1 - 0.5); rhs = eta_eff / 2 * s * ||g_B||^2.
  np.testing.assert_array_equal(paper.steps, [10, 20, 30, 40])
  np.testing.assert_allclose(paper.eta_eff, [0.2, 0.2, 0.1, 0.1])
  np.testing.assert_allclose(paper.lhs, [4.0, 1.0, 1.0, 9.0])
  np.testing.assert_allclose(paper.rhs, [0.1 * 3 * 16, 0.1 * 1 * 4, 0.05 * 1 * 4, 0.05 * 5 * 1])
  np.testing.assert_allclose(paper.lhs_unbiased[:3], [3.5, 0.5, 0.5])
  assert math.isnan(paper.lhs_unbiased[3]) and math.isnan(paper.ratio_unbiased)
  assert paper.ratio == pytest.approx((4.8 + 0.4 + 0.2 + 0.25) / 15.0)

  fixed = inv.equation10(rows, weight_decay=0.0, learning_rate=0.4, start_fraction=0.6).paper
  np.testing.assert_array_equal(fixed.steps, [30, 40])  # steps >= 0.6 * 40
  np.testing.assert_allclose(fixed.rhs, [0.2 * 1 * 4, 0.2 * 5 * 1])
  assert inv.equation10(rows, weight_decay=0.0, start_fraction=0.6).update.steps.tolist() == [40]

  empty = inv.equation10(rows[:1], weight_decay=0.1)
  assert empty.update.steps.size == 0 and math.isnan(empty.update.ratio)
  with pytest.raises(ValueError, match=r"equation10: momentum must be in \[0, 1\)"):
    inv.equation10(rows, weight_decay=0.1, momentum=1.0)
  with pytest.raises(ValueError, match="equation10: weight_decay must be >= 0"):
    inv.equation10(rows, weight_decay=-0.1)


def _quadratic_sgd_rows(rng, *, curvature, lam, eta, sigma, num_steps, x0):
  """SGD on f = a x^2 / 2 with gradient noise sigma, as the diagnostic rows would record it.

  The update u uses one minibatch; grad F in update_descent is estimated from other,
  independent minibatches (noise sigma / 4), as the driver does.
  """
  rows, x = [], x0
  for step in range(num_steps):
    g_batch = curvature * x + sigma * rng.standard_normal()
    update = -eta * (g_batch + lam * x)
    grad_f_estimate = curvature * x + 0.25 * sigma * rng.standard_normal()
    rows.append({"step": step, "lr": eta,
                 "update_descent": -(grad_f_estimate + lam * x) * update,
                 "update_sharpness": curvature, "diagnostic_update_norm": abs(update),
                 "grad_norm": abs(curvature * x), "minibatch_grad_norm": abs(g_batch)})
    x = x + update
  return rows


def test_equation10_balances_at_the_invariant_measure_of_a_quadratic(seed):
  rng = np.random.default_rng(seed)
  a, eta, sigma = 1.0, 0.5, 1.0
  for lam in (0.0, 0.2):
    # Stationary variance of x' = (1 - eta (a + lam)) x - eta xi: start in it, no burn-in.
    c = a + lam
    variance = eta * sigma ** 2 / (c * (2 - eta * c))
    rows = _quadratic_sgd_rows(rng, curvature=a, lam=lam, eta=eta, sigma=sigma,
                               num_steps=20_000, x0=math.sqrt(variance) * rng.standard_normal())
    update = inv.equation10(rows, weight_decay=lam, num_windows=20).update
    # For a quadratic the Taylor expansion is exact, so E[gain] = 0. The lag-1
    # correlation is 0.5, so 20 windows of 1000 steps give independent batch means;
    # 6 standard errors (t with 19 degrees of freedom exceeds 6 with probability 1e-5).
    assert abs(update.gain_mean) < 6 * update.gain_stderr
    assert update.ratio == pytest.approx(1.0, abs=0.04)  # sd of the ratio ~ 0.005
    assert update.relative_gain_stderr < 0.03
  # lam = 0: the paper's form balances too (E a^2 x^2 = eta a (a^2 x^2 + sigma^2) / 2).
  x0 = math.sqrt(eta / (2 - eta)) * rng.standard_normal()
  rows = _quadratic_sgd_rows(rng, curvature=a, lam=0.0, eta=eta, sigma=sigma, num_steps=20_000,
                             x0=x0)
  paper = inv.equation10(rows, weight_decay=0.0).paper
  assert paper.ratio == pytest.approx(1.0, abs=0.08)  # sd ~ 0.014
  # Far from the invariant measure (descending from x0 = 100, noise negligible) the
  # rhs is only eta a / 2 = 1/4 of the lhs: the balance does not hold.
  descending = _quadratic_sgd_rows(rng, curvature=a, lam=0.0, eta=eta, sigma=1e-6,
                                   num_steps=20, x0=100.0)
  assert inv.equation10(descending, weight_decay=0.0).update.ratio == pytest.approx(0.25, rel=1e-3)


# ---------------------------------------------------------------------------- figures


def test_figures_are_written(tmp_path, seed):
  rng = np.random.default_rng(seed)
  rows = []
  for step in range(0, 400, 5):
    rows.append({"step": step, "epoch": step / 50, "lr": 0.1, "train_loss": 1.0})
    rows.append({"step": step, "epoch": step / 50, "lr": 0.1,
                 "full_loss": 0.1 + 0.02 * rng.random(), "grad_norm": 0.5 + 0.1 * rng.random(),
                 "noise_norm": 1.0 + 0.1 * rng.random(),
                 "update_descent": 0.01 + 0.002 * rng.normal(), "update_sharpness": 3.0,
                 "diagnostic_update_norm": 0.08 + 0.01 * rng.random(),
                 "minibatch_grad_norm": 1.1 + 0.1 * rng.random(),
                 "grad_norm_sq_unbiased": 0.2 + 0.05 * rng.random(),
                 "weight_norm": 10 + rng.random()})
  steps = np.arange(0, 400, 5)
  comparison = inv.compare_windows(steps, rng.normal(size=(steps.size, 4)), 4,
                                   num_directions=8)
  balance = inv.equation10(rows, weight_decay=5e-4)
  paths = [
      # sharpness is in no row: its panel says so.
      figs.plot_birkhoff_averages(rows, str(tmp_path / "a" / "birkhoff.png")),
      figs.plot_window_distances(comparison, str(tmp_path / "windows.png")),
      figs.plot_equation10(balance, str(tmp_path / "equation10.png")),
      figs.plot_equation10(inv.equation10(rows[:1], weight_decay=0.0),
                           str(tmp_path / "equation10_empty.png")),
      figs.plot_weight_ball(steps, [r["weight_norm"] for r in rows[1::2]], 12.0,
                            str(tmp_path / "ball.png")),
  ]
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == PNG_HEADER
