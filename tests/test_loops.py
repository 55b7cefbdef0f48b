"""Called with concrete arrays, the diagnostics compile their own steps and drive them.

The results must equal those of the same function traced under jax.jit with `lax` loops,
a second call with the same shapes must compile nothing, and sharded inputs must stay
sharded. (That long loops do not warn is tested on the README's example, tests/test_api.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from invmeasure import diagnostics as dg
from invmeasure.diagnostics import _loops
from tests import reference as ref

# Lengths driven in chunks of 3 (9 = 3 + 3 + 3), 1 (7) and 4 (8) steps.
assert _loops.CHUNK == 4
STEPS, SHORT, EIGHT = 9, 7, 8


def calls(loss_fn, params, batch, batches, key):
  """Every diagnostic once, each keyword-complete, keyed by name."""
  direction = jax.tree.map(jnp.ones_like, params)
  return {
      "gradient_stats": lambda **kw: dg.gradient_stats(loss_fn, params, batches, **kw),
      "sharpness": lambda **kw: dg.sharpness(loss_fn, params, batch, key=key,
                                             num_iters=STEPS, tol=0.0, **kw),
      "sharpness_early_exit": lambda **kw: dg.sharpness(loss_fn, params, batch, key=key,
                                                        num_iters=13, tol=5e-2, **kw),
      "hessian_trace": lambda **kw: dg.hessian_trace(loss_fn, params, batch, key=key,
                                                     num_samples=SHORT, **kw),
      "lanczos": lambda **kw: dg.lanczos(loss_fn, params, batch, key=key, num_iters=EIGHT,
                                         top_k=2, return_vectors=True, **kw),
      "spectral_density": lambda **kw: dg.spectral_density(
          loss_fn, params, batch, key=key, num_probes=2, num_iters=EIGHT, **kw),
      "hvp": lambda **kw: dg.hvp(loss_fn, params, batch, direction),
      "directional_sharpness": lambda **kw: dg.directional_sharpness(
          loss_fn, params, batch, direction),
  }


def stacked(batch, k):
  """The batch's examples split into k minibatches along a new leading axis."""
  return jax.tree.map(lambda a: a.reshape((k, a.shape[0] // k) + a.shape[1:]), batch)


def assert_trees_close(got, want, rtol, atol=0.0):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


class CountTraces:
  """Counts jit traces (every compilation starts with one) while active."""

  def __init__(self):
    self.count = 0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    if self.active and event == "/jax/core/compile/jaxpr_trace_duration":
      self.count += 1


COUNTER = CountTraces()


NAMES = ["gradient_stats", "sharpness", "sharpness_early_exit", "hessian_trace", "lanczos",
         "spectral_density", "hvp", "directional_sharpness"]
LOOPLESS = ("hvp", "directional_sharpness")


@pytest.mark.parametrize("name", NAMES)
def test_driven_from_python_equals_traced_lax_loops(name, seed):
  with jax.enable_x64():
    loss_fn, params, batch = ref.conv_problem(seed, batch=STEPS * 2, dtype=jnp.float64)
    key = jax.random.key(seed)
    fns = calls(loss_fn, params, batch, stacked(batch, STEPS), key)
    assert sorted(fns) == sorted(NAMES)
    concrete = fns[name]()
    loop = {} if name in LOOPLESS else {"unroll": False}
    traced = jax.jit(lambda: fns[name](**loop))()
    assert_trees_close(concrete, traced, rtol=1e-10, atol=1e-12)
    if name not in LOOPLESS:  # one compiled lax loop: what accelerators run
      assert_trees_close(fns[name](unroll=False), traced, rtol=1e-10, atol=1e-12)


def test_float32_chunked_lanczos_is_within_1e6_of_the_lax_loop(seed):
  loss_fn, params, batch = ref.conv_problem(seed, batch=16)
  kwargs = dict(key=jax.random.key(seed), k=3, num_iters=30)
  concrete = dg.top_hessian_eigenvalues(loss_fn, params, batch, **kwargs)
  traced = jax.jit(lambda: dg.top_hessian_eigenvalues(loss_fn, params, batch, unroll=False,
                                                      **kwargs))()
  np.testing.assert_allclose(concrete.eigenvalues, traced.eigenvalues, rtol=1e-6)


def test_a_second_call_with_new_values_compiles_nothing(seed):
  loss_fn, params, batch = ref.conv_problem(seed, batch=STEPS * 2)
  key = jax.random.key(seed)
  for fn in calls(loss_fn, params, batch, stacked(batch, STEPS), key).values():
    jax.block_until_ready(fn())
  # New values, same shapes: a new draw of the same problem.
  loss_fn, params, batch = ref.conv_problem(seed + 1, batch=STEPS * 2)
  COUNTER.count, COUNTER.active = 0, True
  try:
    for fn in calls(loss_fn, params, batch, stacked(batch, STEPS), jax.random.key(1)).values():
      jax.block_until_ready(fn())
  finally:
    COUNTER.active = False
  assert COUNTER.count == 0


def test_long_loops_inside_jit_on_cpu_still_warn():
  loss_fn, params, batch = ref.conv_problem(0)
  with pytest.warns(_loops.CpuLoopWarning, match="outside jax.jit"):
    jax.jit(lambda p: dg.hessian_trace(loss_fn, p, batch, key=jax.random.key(0),
                                       num_samples=20)).lower(params)


def test_early_exit_stops_driving_chunks():
  """A converged power iteration runs no further chunks: fewer HVPs than num_iters."""
  loss_fn, params, batch = ref.conv_problem(0)
  hvps = []
  counted = lambda p, b: (jax.debug.callback(lambda: hvps.append(1)), loss_fn(p, b))[1]
  result = dg.sharpness(counted, params, batch, key=jax.random.key(0), num_iters=400, tol=1e-2)
  jax.effects_barrier()
  assert bool(result.converged)
  # The forward pass runs once per HVP; chunks of 4 may run 3 masked steps past it.
  assert 400 % _loops.CHUNK == 0
  assert len(hvps) <= int(result.num_iters) + _loops.CHUNK - 1 < 400


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_sharded_inputs_stay_sharded_and_give_the_same_numbers():
  loss_fn, params, data = ref.mlp_problem(1, hidden=8, batch=32, dtype=jnp.float32)
  batches = stacked(data, 2)
  key = jax.random.key(0)
  want = {"stats": dg.gradient_stats(loss_fn, params, batches),
          "top": dg.sharpness(loss_fn, params, data, key=key, num_iters=9, tol=0.0),
          "eigs": dg.top_hessian_eigenvalues(loss_fn, params, data, key=key, k=2, num_iters=9,
                                             return_vectors=True)}
  mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "model"))
  specs = {"dense1": {"w": P(None, "model"), "b": P("model")},
           "dense2": {"w": P("model", None), "b": P()}}
  s_params = jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), params, specs)
  s_batches = jax.tree.map(
      lambda a: jax.device_put(a, NamedSharding(mesh, P(None, "data"))), batches)
  s_data = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, P("data"))), data)
  got = {"stats": dg.gradient_stats(loss_fn, s_params, s_batches),
         "top": dg.sharpness(loss_fn, s_params, s_data, key=key, num_iters=9, tol=0.0),
         "eigs": dg.top_hessian_eigenvalues(loss_fn, s_params, s_data, key=key, k=2, num_iters=9,
                                            return_vectors=True)}
  # atol: float32 eigenvector entries near 1e-3 differ by ~1e-7 with the reduction order.
  assert_trees_close(got, want, rtol=2e-5, atol=1e-6)
  for vector in (got["stats"].mean_gradient, got["top"].eigenvector):
    for leaf, param in zip(jax.tree.leaves(vector), jax.tree.leaves(s_params)):
      assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim), leaf.sharding


def test_an_unhashable_loss_fn_still_works():
  loss_fn, params, batch = ref.conv_problem(0)

  class Loss:  # defines __eq__ without __hash__: unhashable, like an eqx/dataclass module
    def __eq__(self, other):
      return isinstance(other, Loss)

    __hash__ = None

    def __call__(self, p, b):
      return loss_fn(p, b)

  with pytest.raises(TypeError):
    hash(Loss())
  got = dg.hessian_trace(Loss(), params, batch, key=jax.random.key(0), num_samples=4)
  want = dg.hessian_trace(loss_fn, params, batch, key=jax.random.key(0), num_samples=4)
  np.testing.assert_allclose(got.estimate, want.estimate, rtol=1e-6)
