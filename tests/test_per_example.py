"""Per-example instruments against a plain loop over examples in float64 (numpy formulas
written from the papers' and Cockpit's definitions), chunked or not, inside jit or not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invmeasure import diagnostics as dg
from tests import reference as ref


def _loop(loss_fn, params, batch):
  """Per-example losses and flat gradients, one `jax.grad` per example."""
  size = batch["y"].shape[0]
  losses, grads = [], []
  for i in range(size):
    example = jax.tree.map(lambda a: a[i:i + 1], batch)
    losses.append(float(loss_fn(params, example)))
    grads.append(ref.dense_gradient(loss_fn, params, example))
  return np.array(losses), np.stack(grads)


def _reference(losses, grads, lr, trace, direction_start, direction_end, start_grads,
               start_losses):
  """Every instrument from the per-example values, as the papers (and Cockpit) define them."""
  b = len(losses)
  g = grads.mean(0)
  g2 = g @ g
  cov = np.cov(grads.T, ddof=1)  # sample covariance of the g_i
  dots = grads @ g
  orth = grads - np.outer(dots / g2, g)
  var_diag = grads.var(0, ddof=1)
  out = {
      "norm_test": np.sqrt(np.trace(cov) / b) / np.sqrt(g2),
      "inner_test": np.sqrt(dots.var(ddof=1) / b) / g2,
      "ortho_test": np.sqrt((orth ** 2).sum(1).sum() / (b - 1) / b) / np.sqrt(g2),
      "gsnr": np.mean(g ** 2 / (grads.var(0) + 1e-5)),
      "early_stopping": 1 - b * np.mean(g ** 2 / (var_diag + 1e-5)),
      "cabs": lr * grads.var(0).sum() / losses.mean(),  # Cockpit's divisor B
      "tic": np.mean((grads ** 2).sum(1)) / (trace + 1e-7),
      "noise_scale": np.trace(cov) / g2,
      "noise_scale_unbiased": np.trace(cov) / (g2 - np.trace(cov) / b),
  }
  # alpha: weighted least-squares quadratic through both ends of the step d.
  t = np.linalg.norm(direction_start)
  unit = direction_start / t
  proj_start, proj_end = start_grads @ unit, grads @ unit
  phi = np.array([[1, 0, 0], [1, t, t * t], [0, 1, 0], [0, 1, 2 * t]])
  var = np.array([start_losses.var(ddof=1), losses.var(ddof=1), proj_start.var(ddof=1),
                  proj_end.var(ddof=1)])
  y = np.array([start_losses.mean(), losses.mean(), proj_start.mean(), proj_end.mean()])
  w = np.diag(1 / var)
  mu = np.linalg.solve(phi.T @ w @ phi, phi.T @ w @ y)
  out["alpha"] = -1.0 if mu[2] < 0 else 2 * t / (-mu[1] / mu[2]) - 1
  del direction_end
  return out


def _instruments(stats, start_stats, lr, trace, t):
  ns = dg.noise_scale(stats)
  start = dg.step_length_point(start_stats, 0, t)
  end = dg.step_length_point(stats, 0, t)
  return {"norm_test": dg.norm_test(stats), "inner_test": dg.inner_test(stats),
          "ortho_test": dg.ortho_test(stats), "gsnr": dg.mean_gsnr(stats),
          "early_stopping": dg.early_stopping(stats), "cabs": dg.cabs_batch_size(stats, lr),
          "tic": dg.tic(stats, trace), "noise_scale": ns.simple,
          "noise_scale_unbiased": ns.unbiased,
          "alpha": dg.normalized_step_length(start, end, t)}


@pytest.mark.parametrize("problem,chunk_size,unroll", [
    ("mlp", None, None), ("mlp", 4, True), ("mlp", 4, False), ("conv", 2, None)])
def test_every_instrument_matches_a_plain_loop_in_float64(problem, chunk_size, unroll, seed):
  with jax.enable_x64():
    if problem == "mlp":
      loss_fn, params, batch = ref.mlp_problem(seed, batch=8)
    else:
      loss_fn, params, batch = ref.conv_problem(seed, batch=8, dtype=jnp.float64)
    # A step of SGD on one batch, then the next batch at the new weights.
    rng = np.random.default_rng(seed + 1)
    start_batch = jax.tree.map(lambda a: a, batch)
    batch = dict(batch, x=batch["x"] + 0.3 * rng.normal(size=batch["x"].shape))
    lr = 0.3
    start_losses, start_grads = _loop(loss_fn, params, start_batch)
    direction = -lr * start_grads.mean(0)
    params_end = ref.unflatten_like(params, ref.flat(params) + direction)
    losses, grads = _loop(loss_fn, params_end, batch)
    trace = 1.7  # any curvature trace: the TIC's numerator is what is tested here
    want = _reference(losses, grads, lr, trace, direction, None, start_grads, start_losses)

    d = ref.unflatten_like(params, direction)

    @jax.jit
    def measure(params, params_end, start_batch, batch):
      start_stats = dg.per_example_stats(loss_fn, params, start_batch, directions=[d],
                                         chunk_size=chunk_size, unroll=unroll)
      stats = dg.per_example_stats(loss_fn, params_end, batch, directions=[d],
                                   chunk_size=chunk_size, unroll=unroll)
      return stats, _instruments(stats, start_stats, lr, trace, dg.tree_norm(d))

    stats, got = measure(params, params_end, start_batch, batch)
    np.testing.assert_allclose(stats.losses, losses, rtol=1e-10)
    np.testing.assert_allclose(stats.sq_norms, (grads ** 2).sum(1), rtol=1e-10)
    np.testing.assert_allclose(stats.mean_dots, grads @ grads.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.direction_dots[0], grads @ direction, rtol=1e-10)
    np.testing.assert_allclose(ref.flat(stats.mean_gradient), grads.mean(0), rtol=1e-10)
    deviations = ((grads - grads.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(ref.flat(stats.sum_sq_dev), deviations,
                               rtol=1e-8, atol=1e-12 * deviations.max())
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-8, err_msg=name)


def test_the_mean_gradient_given_is_used_and_directions_are_optional(seed):
  with jax.enable_x64():
    loss_fn, params, batch = ref.mlp_problem(seed, batch=6)
    g = jax.grad(loss_fn)(params, batch)
    given = dg.per_example_stats(loss_fn, params, batch, mean_gradient=g, sum_squares=False)
    own = dg.per_example_stats(loss_fn, params, batch)
    np.testing.assert_allclose(given.mean_dots, own.mean_dots, rtol=1e-12)
    assert given.sum_sq_dev is None and given.direction_dots.shape == (0, 6)
    with pytest.raises(ValueError, match="sum_squares=True"):
      dg.mean_gsnr(given)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gsnr_keeps_its_digits_in_float32_when_gradients_vary_little(chunk_size, seed):
  """g_i = m + unit noise with |m| 1,000-2,000: sum_i g_i^2 / B - g^2 cancels away float32's
  digits of the variance (relative error ~1e-7 m^2 ~ 0.1-0.4); summed about g, the squares
  keep GSNR within 1e-4 of float64's on the same float32 gradients."""
  rng = np.random.default_rng(seed)
  mean = rng.choice([-1.0, 1.0], 50) * rng.uniform(1000.0, 2000.0, 50)
  targets = (mean + rng.normal(size=(8, 50))).astype(np.float32)
  loss_fn = lambda p, b: jnp.mean(b["t"] @ p["w"])  # noqa: E731  g_i = t_i exactly
  stats = dg.per_example_stats(loss_fn, {"w": jnp.zeros(50, jnp.float32)},
                               {"t": jnp.asarray(targets)}, chunk_size=chunk_size)
  t = targets.astype(np.float64)
  expected = np.mean(t.mean(0) ** 2 / (t.var(0) + 1e-5))
  assert float(dg.mean_gsnr(stats)) == pytest.approx(expected, rel=1e-4)
  naive_variance = (targets ** 2).sum(0, dtype=np.float32) / 8 - targets.mean(0) ** 2
  assert np.max(np.abs(naive_variance / t.var(0) - 1)) > 0.05, "not ill-conditioned enough"


def test_a_batch_sharded_over_a_mesh_gives_the_per_example_gradients_of_one_device(seed):
  """XLA partitions vmapped per-example convolution gradients over a sharded batch wrongly
  (all but the first device's examples); under a mesh the pass takes the whole batch."""
  devices = jax.devices()
  assert len(devices) >= 2, "tests/conftest.py simulates 8 devices"
  loss_fn, params, batch = ref.conv_problem(seed, batch=2 * len(devices))
  mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  one_device = jax.jit(lambda b: dg.per_example_stats(loss_fn, params, b))(batch)
  with jax.set_mesh(mesh):
    on_mesh = jax.jit(lambda b: dg.per_example_stats(loss_fn, params, b))(sharded)
  for got, want in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(one_device)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_layer_norms_name_every_leaf_by_its_path():
  tree = {"Conv_0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.zeros(3)},
          "Dense_0": {"kernel": jnp.ones(4)}}
  norms = dg.layer_norms(grad=tree)
  assert set(norms) == {"grad/Conv_0/kernel", "grad/Conv_0/bias", "grad/Dense_0/kernel"}
  np.testing.assert_allclose(norms["grad/Conv_0/kernel"], 4.0)
  np.testing.assert_allclose(norms["grad/Dense_0/kernel"], 2.0)


def test_a_chunk_size_that_does_not_divide_the_batch_is_an_error(seed):
  loss_fn, params, batch = ref.mlp_problem(seed, batch=6, dtype=jnp.float32)
  with pytest.raises(ValueError, match="chunk_size=4 must divide the batch size 6"):
    dg.per_example_stats(loss_fn, params, batch, chunk_size=4)


def test_a_concave_fit_gives_minus_one():
  flat = dg.StepLengthPoint(jnp.asarray(1.0), jnp.asarray(0.1), jnp.asarray(-1.0),
                            jnp.asarray(0.1))
  steeper = flat._replace(loss=jnp.asarray(0.0), slope=jnp.asarray(-3.0))
  assert float(dg.normalized_step_length(flat, steeper, 1.0)) == -1.0
