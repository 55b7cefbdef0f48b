"""hvp, directional_sharpness and sharpness against dense Hessians and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invmeasure import diagnostics as dg
from tests import reference as ref

# Fresh random inputs on every run; the parametrised draw index keeps test ids stable
# (pytest-xdist workers must collect the same tests). A failing seed is printed.
DRAWS = range(3)


def quadratic(eigenvalues, seed):
  """0.5 x^T A x with A = Q diag(eigenvalues) Q^T for a random orthogonal Q."""
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  a = q @ np.diag(eigenvalues) @ q.T
  loss = lambda p, batch: 0.5 * p["x"] @ jnp.asarray(a) @ p["x"]
  return loss, a, q


@pytest.mark.parametrize("draw", DRAWS)
def test_hvp_matches_dense_hessian(draw, seed):
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(seed)
    hess = ref.dense_hessian(loss_fn, params, batch)
    v = np.random.default_rng(seed + 1).normal(size=hess.shape[0])
    got = ref.flat(dg.hvp(loss_fn, params, batch, ref.unflatten_like(params, v)))
    want = hess @ v
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


@pytest.mark.parametrize("draw", DRAWS)
def test_directional_sharpness_is_rayleigh_quotient(draw, seed):
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(seed)
    hess = ref.dense_hessian(loss_fn, params, batch)
    v = np.random.default_rng(seed + 2).normal(size=hess.shape[0]) * 3.0
    got = jax.jit(dg.directional_sharpness, static_argnums=0)(
        loss_fn, params, batch, ref.unflatten_like(params, v))
    np.testing.assert_allclose(got, v @ hess @ v / (v @ v), rtol=1e-8)


@pytest.mark.parametrize("draw", DRAWS)
def test_sharpness_matches_eigh(draw, seed):
  with jax.enable_x64():
    # Power iteration's accuracy needs a gap between the top two magnitudes: draw fresh
    # problems until one has it (about one draw in ten lacks it).
    for attempt in range(20):
      loss_fn, params, batch = ref.mlp_problem(seed + 1000 * attempt)
      eigvals, eigvecs = np.linalg.eigh(ref.dense_hessian(loss_fn, params, batch))
      order = np.argsort(-np.abs(eigvals))
      top, second = eigvals[order[0]], eigvals[order[1]]
      if abs(second) < 0.95 * abs(top):
        break
    assert abs(second) < 0.95 * abs(top), "no problem with an eigengap in 20 draws"
    result = jax.jit(dg.sharpness, static_argnums=0,
                     static_argnames=("num_iters", "tol", "unroll"))(
        loss_fn, params, batch, key=jax.random.key(seed), num_iters=2000, tol=1e-13,
        unroll=False)
    assert bool(result.converged)
    assert abs(float(result.eigenvalue) - top) <= 1e-4 * abs(top)
    cosine = abs(ref.flat(result.eigenvector) @ eigvecs[:, order[0]])
    assert cosine >= 1 - 1e-4
    assert float(result.residual) <= 1e-3 * abs(top)


def test_sharpness_finds_largest_magnitude_negative_eigenvalue():
  with jax.enable_x64():
    loss_fn, _, _ = quadratic([-5.0, 2.0, 1.0, 0.5], seed=0)
    params = {"x": jnp.ones(4)}
    result = dg.sharpness(loss_fn, params, None, key=jax.random.key(1), num_iters=200,
                          tol=1e-12, unroll=False)  # a quadratic: a lax loop is fine
    np.testing.assert_allclose(result.eigenvalue, -5.0, rtol=1e-8)


def test_unrolled_and_looped_power_iteration_agree():
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(7)
    kwargs = dict(key=jax.random.key(3), num_iters=12, tol=0.0)
    looped = dg.sharpness(loss_fn, params, batch, unroll=False, **kwargs)
    unrolled = dg.sharpness(loss_fn, params, batch, unroll=True, **kwargs)
    np.testing.assert_allclose(looped.eigenvalue, unrolled.eigenvalue, rtol=1e-12)
    assert int(looped.num_iters) == int(unrolled.num_iters) == 12


def test_unrolled_power_iteration_freezes_after_convergence():
  with jax.enable_x64():
    loss_fn, _, _ = quadratic([4.0, 1.0, 0.5], seed=3)
    params = {"x": jnp.ones(3)}
    result = dg.sharpness(loss_fn, params, None, key=jax.random.key(0), num_iters=60,
                          tol=1e-6, unroll=True)
    looped = dg.sharpness(loss_fn, params, None, key=jax.random.key(0), num_iters=60,
                          tol=1e-6, unroll=False)
    assert bool(result.converged) and int(result.num_iters) < 60
    assert int(result.num_iters) == int(looped.num_iters)
    np.testing.assert_allclose(result.eigenvalue, looped.eigenvalue, rtol=1e-12)


def test_warm_start_converges_at_once():
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(11)
    cold = dg.sharpness(loss_fn, params, batch, key=jax.random.key(0), num_iters=2000,
                        tol=1e-12, unroll=False)
    warm = dg.sharpness(loss_fn, params, batch, init=cold.eigenvector, num_iters=50,
                        tol=1e-9, unroll=False)
    assert int(warm.num_iters) <= 3
    np.testing.assert_allclose(warm.eigenvalue, cold.eigenvalue, rtol=1e-9)


def test_quadratic_closed_forms():
  with jax.enable_x64():
    loss_fn, a, _ = quadratic([3.0, -1.0, 0.25, 2.5, 0.1], seed=5)
    v = np.random.default_rng(0).normal(size=5)
    params = {"x": jnp.asarray(np.random.default_rng(1).normal(size=5))}
    np.testing.assert_allclose(dg.hvp(loss_fn, params, None, {"x": v})["x"], a @ v,
                               rtol=1e-12)
    np.testing.assert_allclose(dg.directional_sharpness(loss_fn, params, None, {"x": v}),
                               v @ a @ v / (v @ v), rtol=1e-12)


def test_float32_hvp_accepts_float64_vector():
  loss_fn, params, batch = ref.mlp_problem(0, dtype=jnp.float32)
  v = jax.tree.map(lambda p: np.ones(p.shape, np.float64), params)
  out = dg.hvp(loss_fn, params, batch, v)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out))


def test_bad_inputs_raise_clear_errors():
  loss_fn, params, batch = ref.mlp_problem(0, dtype=jnp.float32)
  with pytest.raises(TypeError, match=r"params\['step'\].*int32.*floating point"):
    dg.hvp(loss_fn, {**params, "step": jnp.zeros((), jnp.int32)}, batch, params)
  per_example = lambda p, b: jnp.tanh(b["x"] @ p["dense1"]["w"]).sum(axis=1)
  with pytest.raises(ValueError, match=r"scalar.*shape \(16,\).*mean"):
    dg.hvp(per_example, params, batch, params)
  with pytest.raises(ValueError, match="key=.*init="):
    dg.sharpness(loss_fn, params, batch)
  with pytest.raises(ValueError, match="num_iters must be >= 1"):
    dg.sharpness(loss_fn, params, batch, key=jax.random.key(0), num_iters=0)
