"""The diagnostics give the same numbers on 8 simulated devices as on one.

tests/conftest.py starts XLA with 8 host devices.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from invmeasure import diagnostics as dg
from tests import reference as ref

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


def problem():
  loss_fn, params, _ = ref.mlp_problem(3, hidden=8, batch=16, dtype=jnp.float32)
  rng = np.random.default_rng(4)
  batches = {"x": jnp.asarray(rng.normal(size=(4, 16, 4)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 3, size=(4, 16)))}
  return loss_fn, params, batches


def round_of_diagnostics(loss_fn, params, batches, key):
  """Everything a training run measures, in one jitted function."""
  first = jax.tree.map(lambda b: b[0], batches)
  stats = dg.gradient_stats(loss_fn, params, batches)
  top = dg.sharpness(loss_fn, params, first, key=key, num_iters=8, tol=0.0)
  return {
      "loss": stats.loss, "grad_norm": stats.grad_norm, "noise_norm": stats.noise_norm,
      "grad_norm_sq_unbiased": stats.grad_norm_sq_unbiased,
      "sharpness": top.eigenvalue,
      "directional": dg.directional_sharpness(loss_fn, params, first, stats.mean_gradient),
      "hvp_norm": dg.tree_norm(dg.hvp(loss_fn, params, first, stats.mean_gradient)),
  }


def shard(mesh, tree, spec_fn):
  return jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec_fn(a))), tree)


@pytest.mark.parametrize("mesh_shape,param_axis", [((8,), None), ((4, 2), "model")])
def test_sharded_round_equals_single_device(mesh_shape, param_axis):
  loss_fn, params, batches = problem()
  key = jax.random.key(0)
  run = jax.jit(functools.partial(round_of_diagnostics, loss_fn))
  want = jax.device_get(run(params, batches, key))

  axes = ("data",) if param_axis is None else ("data", param_axis)
  mesh = Mesh(np.asarray(jax.devices()).reshape(mesh_shape), axes)
  # Minibatch examples over 'data'; with a model axis, hidden units over 'model'.
  s_batches = shard(mesh, batches, lambda a: P(None, "data"))
  hidden_spec = {"dense1": {"w": P(None, param_axis), "b": P(param_axis)},
                 "dense2": {"w": P(param_axis, None), "b": P()}}
  s_params = jax.tree.map(lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec)),
                          params, hidden_spec)
  lowered = run.lower(s_params, s_batches, key).compile().as_text()
  assert "all-reduce" in lowered, "the batch axis should be reduced across devices"
  got = jax.device_get(run(s_params, s_batches, key))
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
