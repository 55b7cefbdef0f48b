"""Hessian-vector products and the sharpness quantities built on them."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from invmeasure.diagnostics import _checks
from invmeasure.diagnostics import _loops
from invmeasure.diagnostics import _tree_math as tm
from invmeasure.diagnostics._types import Batch, LossFn, Params


def _as_tangent(params, v):
  return jax.tree.map(lambda p, t: jnp.asarray(t, p.dtype), params, v)


def _hvp(loss_fn: LossFn, params, batch, v):
  grad_fn = jax.grad(lambda p: loss_fn(p, batch))
  return jax.jvp(grad_fn, (params,), (_as_tangent(params, v),))[1]


def hvp(loss_fn: LossFn, params: Params, batch: Batch, v: Params) -> Params:
  """Hessian-vector product H(params) v of the minibatch loss, a pytree like `params`.

  Forward-over-reverse (a JVP of the gradient): about 2x the cost of one gradient, and
  no more memory than a gradient plus its tangent.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    v: the vector, a pytree like `params` (cast to its dtypes).
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  return _loops.call(_hvp_call, loss_fn, (params, batch, v))


def directional_sharpness(loss_fn: LossFn, params: Params, batch: Batch,
                          direction: Params) -> jax.Array:
  """Curvature along `direction`: d^T H d / ||d||^2.

  Computed as the second derivative of t -> loss(params + t d) at 0 (forward over
  forward), which needs no backward pass.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    direction: a nonzero pytree like `params`.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  return _loops.call(_directional_sharpness, loss_fn, (params, batch, direction))


class SharpnessResult(NamedTuple):
  """Top Hessian eigenpair estimate from power iteration."""
  eigenvalue: jax.Array    # Rayleigh quotient v^T H v, signed; largest in magnitude
  eigenvector: Params      # unit pytree like params; pass as `init` to warm-start
  residual: jax.Array      # ||H v - eigenvalue v||, an a-posteriori error bound
  num_iters: jax.Array     # Hessian-vector products that changed the estimate
  converged: jax.Array     # relative change of the eigenvalue fell below tol


def sharpness(loss_fn: LossFn, params: Params, batch: Batch, *,
              key: jax.Array | None = None, init: Params | None = None,
              num_iters: int = 20, tol: float = 1e-3,
              unroll: bool | None = None) -> SharpnessResult:
  """Largest-magnitude Hessian eigenvalue of the minibatch loss by power iteration.

  Stops once the eigenvalue changes by at most `tol` relative to itself, or after
  `num_iters` Hessian-vector products.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    key: PRNG key for a random Gaussian start (used when `init` is None).
    init: a start vector, e.g. the previous round's `eigenvector` (warm start).
    num_iters: maximum number of Hessian-vector products.
    tol: stop once |lambda_k - lambda_{k-1}| <= tol * |lambda_k|.
    unroll: how the loop runs (see `invmeasure.diagnostics` on loops); the default
      is fast on every backend. Unrolled, the estimate is frozen after convergence,
      so every setting gives the same result.

  Returns:
    `SharpnessResult`; pass its `eigenvector` as `init` next time to warm-start.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  if init is None and key is None:
    raise ValueError("sharpness needs a start: pass key= (random start) or init= (warm start)")
  operands = (params, batch, None if init is not None else key, init)
  return _loops.run(_POWER_ITERATION, (loss_fn, tol), operands, num_iters, unroll=unroll)


def _hvp_call(loss_fn: LossFn, operands):
  params, batch, v = operands
  return _hvp(loss_fn, params, batch, v)


def _directional_sharpness(loss_fn: LossFn, operands) -> jax.Array:
  params, batch, direction = operands
  direction = _as_tangent(params, direction)
  along = lambda p: jax.jvp(lambda q: loss_fn(q, batch), (p,), (direction,))[1]
  curvature = jax.jvp(along, (params,), (direction,))[1]
  return curvature / tm.tree_norm_sq(direction)


class _PowerState(NamedTuple):
  vector: Params
  eigenvalue: jax.Array
  residual: jax.Array
  num_iters: jax.Array
  converged: jax.Array


def _power_init(static, operands) -> _PowerState:
  params, _, key, init = operands
  start = tm.tree_random_like(key, params) if init is None else init
  vector = tm.tree_normalize(_as_tangent(params, start))
  zero = jnp.zeros((), tm.tree_vdot(vector, vector).dtype)
  return _PowerState(vector, zero, zero, jnp.zeros((), jnp.int32), jnp.zeros((), bool))


def _power_step(static, operands, i, state: _PowerState) -> _PowerState:
  loss_fn, tol = static
  params, batch, _, _ = operands
  hv = _hvp(loss_fn, params, batch, state.vector)
  eigenvalue = tm.tree_vdot(state.vector, hv)
  hv_norm_sq = tm.tree_norm_sq(hv)
  residual = tm.tree_norm(tm.tree_axpy(-eigenvalue, state.vector, hv))
  change = jnp.abs(eigenvalue - state.eigenvalue)
  converged = (state.num_iters > 0) & (change <= tol * jnp.abs(eigenvalue))
  vector = tm.tree_scale(jax.lax.rsqrt(hv_norm_sq), hv)
  return _PowerState(vector, eigenvalue, residual, state.num_iters + 1, converged)


def _power_finish(static, operands, state: _PowerState) -> SharpnessResult:
  return SharpnessResult(state.eigenvalue, state.vector, state.residual,
                         state.num_iters, state.converged)


_POWER_ITERATION = _loops.Algorithm(
    _power_init, _power_step, _power_finish, done=lambda static, state: state.converged)
