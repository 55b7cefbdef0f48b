"""gradient_stats against float64 numpy references, closed forms and its own streaming form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invmeasure import diagnostics as dg
from tests import reference as ref


def linear_regression(seed, *, n=400, d=6):
  """Loss mean((X w - y)^2) / 2 on a fixed data set; its gradients have a closed form."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = x @ rng.normal(size=d) + rng.normal(size=n)
  w = rng.normal(size=d)
  loss_fn = lambda p, b: 0.5 * jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)
  grad_np = lambda w_, xb, yb: xb.T @ (xb @ w_ - yb) / len(yb)
  return loss_fn, x, y, w, grad_np


def numpy_stats(grads: np.ndarray, losses: np.ndarray) -> dict:
  """Two-pass float64 reference of every statistic."""
  k = len(grads)
  mean = grads.mean(axis=0)
  s = np.sum((grads - mean) ** 2)
  return dict(loss=losses.mean(), grad_norm=np.linalg.norm(mean),
              noise_norm=np.sqrt(s / k), grad_norm_sq_unbiased=mean @ mean - s / (k * (k - 1)),
              noise_norm_sq_unbiased=s / (k - 1))


def stacked_minibatches(rng, x, y, k, b):
  idx = rng.integers(0, len(y), size=(k, b))
  return {"x": x[idx], "y": y[idx]}, idx


@pytest.mark.parametrize("unroll", [True, False])
def test_gradient_stats_match_closed_form_in_float64(unroll):
  seed = int(np.random.default_rng().integers(2**31))
  with jax.enable_x64():
    loss_fn, x, y, w, grad_np = linear_regression(seed)
    rng = np.random.default_rng(seed)
    batches, idx = stacked_minibatches(rng, x, y, k=7, b=16)
    grads = np.stack([grad_np(w, x[i], y[i]) for i in idx])
    losses = np.array([0.5 * np.mean((x[i] @ w - y[i]) ** 2) for i in idx])
    want = numpy_stats(grads, losses)
    got = dg.gradient_stats(loss_fn, {"w": jnp.asarray(w)}, batches, unroll=unroll)
    for name, value in want.items():
      np.testing.assert_allclose(getattr(got, name), value, rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(got.mean_gradient["w"], grads.mean(axis=0), rtol=1e-10)
    assert int(got.num_minibatches) == 7


def test_gradient_stats_on_mlp_match_numpy_per_minibatch_gradients():
  with jax.enable_x64():
    loss_fn, params, _ = ref.mlp_problem(0)
    rng = np.random.default_rng(1)
    batches = {"x": jnp.asarray(rng.normal(size=(5, 8, 4))),
               "y": jnp.asarray(rng.integers(0, 3, size=(5, 8)))}
    per_batch = [jax.tree.map(lambda b: b[k], batches) for k in range(5)]
    grads = np.stack([ref.dense_gradient(loss_fn, params, b) for b in per_batch])
    losses = np.array([float(loss_fn(params, b)) for b in per_batch])
    want = numpy_stats(grads, losses)
    got = jax.jit(dg.gradient_stats, static_argnums=0)(loss_fn, params, batches)
    for name, value in want.items():
      np.testing.assert_allclose(getattr(got, name), value, rtol=1e-10, err_msg=name)


def test_streaming_form_equals_one_call():
  loss_fn, params, _ = ref.mlp_problem(2, dtype=jnp.float32)
  rng = np.random.default_rng(2)
  batches = {"x": jnp.asarray(rng.normal(size=(6, 8, 4)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 3, size=(6, 8)))}
  update = jax.jit(functools.partial(dg.gradient_stats_update, loss_fn))
  state = dg.gradient_stats_init(params)
  for k in range(6):
    state = update(state, params, jax.tree.map(lambda b: b[k], batches))
  streamed = dg.gradient_stats_finalize(state)
  whole = dg.gradient_stats(loss_fn, params, batches)
  for name in ("loss", "grad_norm", "noise_norm", "grad_norm_sq_unbiased"):
    np.testing.assert_allclose(getattr(streamed, name), getattr(whole, name), rtol=1e-5)


def test_welford_is_stable_when_noise_is_tiny_next_to_the_mean():
  # Naive E||g||^2 - ||E g||^2 in float32 loses every digit here; Welford keeps them.
  rng = np.random.default_rng(int(np.random.default_rng().integers(2**31)))
  grads = 1000.0 + 1e-2 * rng.normal(size=(50, 100))
  state = dg.gradient_stats_init({"g": jnp.zeros(100, jnp.float32)})
  for g in grads:
    state = dg.gradient_stats_accumulate(state, jnp.float32(0.0), {"g": jnp.asarray(g, jnp.float32)})
  got = dg.gradient_stats_finalize(state)
  want = numpy_stats(grads, np.zeros(50))
  np.testing.assert_allclose(got.noise_norm, want["noise_norm"], rtol=1e-2)
  naive = np.mean(np.sum(grads.astype(np.float32) ** 2, axis=1)) - np.sum(grads.astype(np.float32).mean(0) ** 2)
  assert abs(np.sqrt(abs(naive)) - want["noise_norm"]) > 0.1 * want["noise_norm"]


def test_bias_correction_removes_the_jensen_bias():
  """Averaged over draws, the corrected estimate hits ||grad f||^2; the plain one is high by ~noise^2/K."""
  with jax.enable_x64():
    loss_fn, x, y, w, grad_np = linear_regression(3, n=2000)
    full_sq = float(np.sum(grad_np(w, x, y) ** 2))
    rng = np.random.default_rng(4)
    draws = 300
    batches, _ = stacked_minibatches(rng, x, y, k=4 * draws, b=8)
    batches = jax.tree.map(lambda a: a.reshape((draws, 4) + a.shape[1:]), batches)
    stats = jax.vmap(lambda b: dg.gradient_stats(loss_fn, {"w": jnp.asarray(w)}, b,
                                                 unroll=False))(batches)
    plain = np.asarray(stats.grad_norm) ** 2
    corrected = np.asarray(stats.grad_norm_sq_unbiased)
    stderr = corrected.std() / np.sqrt(draws)
    assert abs(corrected.mean() - full_sq) < 4 * stderr
    bias = np.mean(np.asarray(stats.noise_norm_sq_unbiased)) / 4
    assert bias > 6 * stderr, "the bias must be detectable at this number of draws"
    plain_stderr = plain.std() / np.sqrt(draws)
    assert abs(plain.mean() - full_sq - bias) < 4 * plain_stderr


def test_bad_inputs_raise_clear_errors():
  loss_fn, params, _ = ref.mlp_problem(0, dtype=jnp.float32)
  good_x = jnp.zeros((4, 8, 4))
  with pytest.raises(ValueError, match=r"disagree on the number of minibatches.*\['y'\] has 3"):
    dg.gradient_stats(loss_fn, params, {"x": good_x, "y": jnp.zeros((3, 8), jnp.int32)})
  with pytest.raises(ValueError, match="K >= 2.*K=1"):
    dg.gradient_stats(loss_fn, params, {"x": good_x[:1], "y": jnp.zeros((1, 8), jnp.int32)})
  with pytest.raises(TypeError, match="floating point"):
    dg.gradient_stats(loss_fn, {**params, "n": jnp.int32(0)},
                      {"x": good_x, "y": jnp.zeros((4, 8), jnp.int32)})
  with pytest.raises(ValueError, match="scalar"):
    dg.gradient_stats(lambda p, b: jnp.tanh(b["x"] @ p["dense1"]["w"]).sum(1), params,
                      {"x": good_x, "y": jnp.zeros((4, 8), jnp.int32)})
