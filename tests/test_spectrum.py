"""Hutchinson trace, Lanczos and spectral density against dense Hessians and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from invmeasure.diagnostics import _tree_math as tm
from invmeasure.diagnostics import spectrum as sp
from tests import reference as ref

# Fresh random inputs on every run; the parametrised draw index keeps test ids stable
# (pytest-xdist workers must collect the same tests). A failing seed is printed.
DRAWS = range(3)

# Module-level jitted entry points, so problems of one shape compile once per test run.
lanczos = jax.jit(sp.lanczos, static_argnums=0,
                  static_argnames=("num_iters", "top_k", "return_vectors", "unroll"))
trace = jax.jit(sp.hessian_trace, static_argnums=0, static_argnames=("num_samples", "unroll"))
density = jax.jit(sp.spectral_density, static_argnums=0,
                  static_argnames=("num_probes", "num_iters", "probe", "unroll"))


def quad_loss(params, a):
  """0.5 x^T A x, with A passed as the batch so every matrix shares one compilation."""
  return 0.5 * params["x"] @ a @ params["x"]


def known_spectrum(eigenvalues, seed):
  """A = Q diag(eigenvalues) Q^T for a random orthogonal Q; returns (A, Q)."""
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  return q @ np.diag(eigenvalues) @ q.T, q


def x_params(n, seed=0):
  return {"x": jnp.asarray(np.random.default_rng(seed).normal(size=n))}


def tridiagonal_eigenvalues(result):
  t = np.diag(result.alphas) + np.diag(result.betas, 1) + np.diag(result.betas, -1)
  return np.sort(np.linalg.eigvalsh(t))[::-1]


@pytest.mark.parametrize("draw", DRAWS)
def test_hutchinson_on_quadratic_matches_trace_and_rademacher_variance(draw, seed):
  with jax.enable_x64():
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(30, 30))
    a = m + m.T
    num = 300
    result = trace(quad_loss, x_params(30), jnp.asarray(a), key=jax.random.key(seed),
                   num_samples=num, unroll=False)
    assert abs(float(result.estimate) - np.trace(a)) <= 4 * float(result.stderr)
    # Var(z^T A z) = 2 sum_{i != j} A_ij^2 for Rademacher z.
    off_diagonal = a - np.diag(np.diag(a))
    closed_form = np.sqrt(2 * np.sum(off_diagonal ** 2) / num)
    assert 0.75 <= float(result.stderr) / closed_form <= 1.25
    assert int(result.num_samples) == num


@pytest.mark.parametrize("draw", DRAWS)
def test_hutchinson_on_mlp_matches_dense_trace(draw, seed):
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(seed)
    hess = ref.dense_hessian(loss_fn, params, batch)
    result = trace(loss_fn, params, batch, key=jax.random.key(seed), num_samples=200,
                   unroll=False)
    assert float(result.stderr) > 0
    assert abs(float(result.estimate) - np.trace(hess)) <= 4 * float(result.stderr)


def test_hutchinson_single_sample_has_nan_stderr():
  with jax.enable_x64():
    a = np.diag([1.0, 2.0, 3.0])
    result = sp.hessian_trace(quad_loss, x_params(3), jnp.asarray(a), key=jax.random.key(0),
                              num_samples=1)
    # Diagonal A: z^T A z = tr(A) for every sign vector z.
    np.testing.assert_allclose(result.estimate, 6.0, rtol=1e-12)
    assert np.isnan(float(result.stderr))


@pytest.mark.parametrize("draw", DRAWS)
def test_lanczos_with_full_basis_recovers_every_eigenvalue(draw, seed):
  """num_iters = dim. The MLP's Hessian has a null space (softmax is shift invariant),
  so the Krylov space stops growing early and the restarts are exercised too."""
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(seed)
    want = np.sort(np.linalg.eigvalsh(ref.dense_hessian(loss_fn, params, batch)))[::-1]
    dim = want.shape[0]
    result = lanczos(loss_fn, params, batch, key=jax.random.key(seed), num_iters=dim,
                     unroll=False)
    got = np.asarray(result.ritz_values)
    assert np.all(np.diff(got) <= 0), "Ritz values are sorted descending"
    assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want))
    np.testing.assert_allclose(tridiagonal_eigenvalues(result), got,
                               atol=1e-10 * np.max(np.abs(want)))
    assert np.all(np.asarray(result.betas) >= 0)


@pytest.mark.parametrize("draw", DRAWS)
def test_few_lanczos_iterations_find_separated_top_eigenpairs(draw, seed):
  with jax.enable_x64():
    rng = np.random.default_rng(seed)
    eigenvalues = np.concatenate([[10.0, 7.0, 5.0], rng.uniform(-1.0, 2.0, size=57)])
    a, q = known_spectrum(eigenvalues, seed)
    result = lanczos(quad_loss, x_params(60), jnp.asarray(a), key=jax.random.key(seed),
                     num_iters=20, top_k=3, return_vectors=True, unroll=False)
    np.testing.assert_allclose(result.ritz_values[:3], [10.0, 7.0, 5.0], rtol=1e-4)
    vectors = np.asarray(result.ritz_vectors["x"])
    assert vectors.shape == (3, 60)
    cosines = np.abs(np.sum(vectors * q[:, :3].T, axis=1))
    assert np.all(cosines >= 0.999), cosines

    top = sp.top_hessian_eigenvalues(quad_loss, x_params(60), jnp.asarray(a),
                                     key=jax.random.key(seed), k=3, num_iters=20,
                                     return_vectors=True, unroll=False)
    np.testing.assert_allclose(top.eigenvalues, result.ritz_values[:3], rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(top.eigenvectors["x"], axis=1), 1.0, rtol=1e-10)


@pytest.mark.parametrize("draw", DRAWS)
def test_lanczos_breakdown_on_low_rank_hessian_stays_finite_and_correct(draw, seed):
  with jax.enable_x64():
    nonzero = np.array([4.0, 1.5, -2.0])
    a, _ = known_spectrum(np.concatenate([nonzero, np.zeros(9)]), seed)
    result = lanczos(quad_loss, x_params(12), jnp.asarray(a), key=jax.random.key(seed),
                     num_iters=10, top_k=10, return_vectors=True, unroll=False)
    got = np.asarray(result.ritz_values)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(result.alphas))
    assert np.all(np.isfinite(result.betas)) and np.all(np.isfinite(result.ritz_vectors["x"]))
    np.testing.assert_allclose(got[[0, 1, -1]], [4.0, 1.5, -2.0], rtol=1e-10)
    np.testing.assert_allclose(got[2:-1], 0.0, atol=1e-10)
    vectors = np.asarray(result.ritz_vectors["x"])
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(10), atol=1e-10)


def test_lanczos_with_more_iterations_than_parameters_masks_the_rest():
  with jax.enable_x64():
    eigenvalues = np.array([3.0, 1.0, 0.5, -0.25, -2.0])
    a, q = known_spectrum(eigenvalues, seed=4)
    result = lanczos(quad_loss, x_params(5), jnp.asarray(a), key=jax.random.key(1),
                     num_iters=8, top_k=8, return_vectors=True, unroll=False)
    got = np.asarray(result.ritz_values)
    np.testing.assert_allclose(got[:5], eigenvalues, atol=1e-12)
    np.testing.assert_allclose(got[5:], -2.0, atol=1e-12)
    np.testing.assert_allclose(tridiagonal_eigenvalues(result), got, atol=1e-12)
    vectors = np.asarray(result.ritz_vectors["x"])
    np.testing.assert_allclose(np.abs(np.sum(vectors[:5] * q.T, axis=1)), 1.0, atol=1e-10)
    assert np.all(vectors[5:] == 0)

    rules = density(quad_loss, x_params(5), jnp.asarray(a), key=jax.random.key(2),
                    num_probes=2, num_iters=8, unroll=False)
    assert np.all(np.isfinite(rules.nodes)) and np.all(np.isfinite(rules.weights))
    np.testing.assert_allclose(np.sum(rules.weights, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(rules.weights[:, 5:], 0.0, atol=1e-20)


def test_lanczos_from_init_equals_lanczos_from_key():
  with jax.enable_x64():
    a, _ = known_spectrum(np.linspace(-1.0, 2.0, 12), seed=3)
    params, key = x_params(12), jax.random.key(5)
    from_key = lanczos(quad_loss, params, jnp.asarray(a), key=key, num_iters=4, unroll=False)
    start = jax.tree.map(lambda leaf: 7.0 * leaf, tm.tree_random_like(key, params))
    from_init = lanczos(quad_loss, params, jnp.asarray(a), init=start, num_iters=4,
                        unroll=False)
    np.testing.assert_allclose(from_init.ritz_values, from_key.ritz_values, rtol=1e-12)


@pytest.mark.parametrize("draw", DRAWS)
def test_slq_estimates_traces_of_functions_of_the_hessian(draw, seed):
  with jax.enable_x64():
    rng = np.random.default_rng(seed)
    eigenvalues = rng.uniform(-1.0, 4.0, size=40)
    a, _ = known_spectrum(eigenvalues, seed)
    key = jax.random.key(seed)
    rules = density(quad_loss, x_params(40), jnp.asarray(a), key=key, num_probes=30,
                    num_iters=12, unroll=False)
    assert rules.nodes.shape == rules.weights.shape == (30, 12)
    assert np.all(np.asarray(rules.weights) >= 0)
    np.testing.assert_allclose(np.sum(rules.weights, axis=1), 1.0, rtol=1e-12)

    linear = sp.slq_trace(rules, 40)
    assert abs(float(linear.estimate) - eigenvalues.sum()) <= 4 * float(linear.stderr)
    square = sp.slq_trace(rules, 40, jnp.square)
    assert abs(float(square.estimate) - np.sum(eigenvalues ** 2)) <= 4 * float(square.stderr)
    # Same Rademacher probes, and the quadrature is exact for f(x) = x: Hutchinson.
    hutchinson = trace(quad_loss, x_params(40), jnp.asarray(a), key=key, num_samples=30,
                       unroll=False)
    np.testing.assert_allclose(linear.estimate, hutchinson.estimate, rtol=1e-10)
    np.testing.assert_allclose(linear.stderr, hutchinson.stderr, rtol=1e-8)


@pytest.mark.parametrize("draw", DRAWS)
def test_slq_nodes_are_the_eigenvalues_with_a_full_basis(draw, seed):
  with jax.enable_x64():
    eigenvalues = np.sort(np.random.default_rng(seed).normal(size=20))[::-1]
    a, _ = known_spectrum(eigenvalues, seed)
    rules = density(quad_loss, x_params(20), jnp.asarray(a), key=jax.random.key(seed),
                    num_probes=3, num_iters=20, probe="normal", unroll=False)
    np.testing.assert_allclose(rules.nodes, np.tile(eigenvalues, (3, 1)), atol=1e-10)
    np.testing.assert_allclose(np.sum(rules.weights, axis=1), 1.0, rtol=1e-12)


def test_density_on_grid_integrates_to_one(seed):
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(seed)
    rules = density(loss_fn, params, batch, key=jax.random.key(0), num_probes=3,
                    num_iters=15, unroll=False)
    sigma = 0.05
    lo, hi = float(rules.nodes.min()) - 10 * sigma, float(rules.nodes.max()) + 10 * sigma
    grid = np.linspace(lo, hi, 20001)
    values = np.asarray(jax.jit(sp.density_on_grid)(rules, grid, sigma))
    assert values.shape == grid.shape and np.all(values >= 0)
    np.testing.assert_allclose(np.trapezoid(values, grid), 1.0, rtol=1e-6)


def assert_trees_close(got, want):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_unrolled_and_looped_agree(seed):
  with jax.enable_x64():
    key = jax.random.key(seed + 1)
    loss_fn, params, batch = ref.mlp_problem(seed)
    for fn, kwargs in [(lanczos, dict(num_iters=6, top_k=2, return_vectors=True)),
                       (trace, dict(num_samples=2)),
                       (density, dict(num_probes=2, num_iters=3))]:
      assert_trees_close(fn(loss_fn, params, batch, key=key, unroll=True, **kwargs),
                         fn(loss_fn, params, batch, key=key, unroll=False, **kwargs))
    # The low-rank quadratic's Krylov space is invariant after 4 steps: both forms restart.
    a, _ = known_spectrum(np.array([4.0, 1.5, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0]), seed=9)
    kwargs = dict(key=key, num_iters=6, top_k=2, return_vectors=True)
    assert_trees_close(lanczos(quad_loss, x_params(8), jnp.asarray(a), unroll=True, **kwargs),
                       lanczos(quad_loss, x_params(8), jnp.asarray(a), unroll=False, **kwargs))


def test_sharded_params_give_the_unsharded_result():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  with jax.enable_x64():
    a, _ = known_spectrum(np.linspace(-1.0, 3.0, 64), seed=2)
    params = x_params(64)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(params, NamedSharding(mesh, PartitionSpec("data")))
    kwargs = dict(key=jax.random.key(0), num_iters=10, top_k=2, return_vectors=True,
                  unroll=False)
    assert_trees_close(lanczos(quad_loss, sharded, jnp.asarray(a), **kwargs),
                       lanczos(quad_loss, params, jnp.asarray(a), **kwargs))


def test_float32_lanczos_is_float32_and_accurate():
  loss_fn, params, batch = ref.mlp_problem(1, dtype=jnp.float32)
  result = sp.lanczos(loss_fn, params, batch, key=jax.random.key(0), num_iters=43,
                      top_k=1, return_vectors=True, unroll=False)
  assert result.ritz_values.dtype == jnp.float32
  assert result.ritz_vectors["dense1"]["w"].shape == (1, 4, 5)
  assert result.ritz_vectors["dense1"]["w"].dtype == jnp.float32
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(1)
    want = np.sort(np.linalg.eigvalsh(ref.dense_hessian(loss_fn, params, batch)))[::-1]
  assert np.max(np.abs(np.asarray(result.ritz_values) - want)) <= 1e-4 * np.max(np.abs(want))


def test_bad_inputs_raise_clear_errors():
  loss_fn, params, batch = ref.mlp_problem(0, dtype=jnp.float32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_iters must be an integer >= 1, got 0"):
    sp.lanczos(loss_fn, params, batch, key=key, num_iters=0)
  with pytest.raises(ValueError, match="num_iters must be an integer >= 1"):
    sp.spectral_density(loss_fn, params, batch, key=key, num_probes=2, num_iters=0)
  with pytest.raises(ValueError, match="num_iters must be an integer >= 1"):
    sp.top_hessian_eigenvalues(loss_fn, params, batch, key=key, k=1, num_iters=0)
  with pytest.raises(ValueError, match="key=.*init="):
    sp.lanczos(loss_fn, params, batch, num_iters=5)
  with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
    sp.hessian_trace(loss_fn, params, batch, key=key, num_samples=0)
  with pytest.raises(ValueError, match="num_probes must be an integer >= 1"):
    sp.spectral_density(loss_fn, params, batch, key=key, num_probes=0, num_iters=3)
  with pytest.raises(ValueError, match="top_k must be <= num_iters"):
    sp.lanczos(loss_fn, params, batch, key=key, num_iters=3, top_k=4, return_vectors=True)
  with pytest.raises(ValueError, match="k must be <= num_iters"):
    sp.top_hessian_eigenvalues(loss_fn, params, batch, key=key, k=5, num_iters=3)
  with pytest.raises(ValueError, match="probe must be 'rademacher' or 'normal'"):
    sp.spectral_density(loss_fn, params, batch, key=key, num_probes=1, num_iters=2,
                        probe="uniform")
  with pytest.raises(ValueError, match="sigma must be > 0"):
    sp.density_on_grid(sp.SpectralDensity(jnp.zeros((1, 2)), jnp.ones((1, 2)) / 2),
                       jnp.linspace(-1, 1, 5), 0.0)
  with pytest.raises(TypeError, match=r"params\['step'\].*int32"):
    sp.hessian_trace(loss_fn, {**params, "step": jnp.zeros((), jnp.int32)}, batch, key=key,
                     num_samples=2)
