"""Hessian-vector products and the sharpness quantities built on them."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from invmeasure.diagnostics import _checks
from invmeasure.diagnostics import _loops
from invmeasure.diagnostics import _tree_math as tm

LossFn = Callable[..., jax.Array]


def _as_tangent(params, v):
  return jax.tree.map(lambda p, t: jnp.asarray(t, p.dtype), params, v)


def _hvp(loss_fn: LossFn, params, batch, v):
  grad_fn = jax.grad(lambda p: loss_fn(p, batch))
  return jax.jvp(grad_fn, (params,), (_as_tangent(params, v),))[1]


def hvp(loss_fn: LossFn, params, batch, v):
  """Hessian-vector product H(params) v of the minibatch loss, a pytree like `params`.

  Forward-over-reverse (a JVP of the gradient): about 2x the cost of one gradient, and
  no more memory than a gradient plus its tangent.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  return _hvp(loss_fn, params, batch, v)


def directional_sharpness(loss_fn: LossFn, params, batch, direction) -> jax.Array:
  """Curvature along `direction`: d^T H d / ||d||^2.

  Computed as the second derivative of t -> loss(params + t d) at 0 (forward over
  forward), which needs no backward pass.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  direction = _as_tangent(params, direction)
  along = lambda p: jax.jvp(lambda q: loss_fn(q, batch), (p,), (direction,))[1]
  curvature = jax.jvp(along, (params,), (direction,))[1]
  return curvature / tm.tree_norm_sq(direction)


class SharpnessResult(NamedTuple):
  """Top Hessian eigenpair estimate from power iteration."""
  eigenvalue: jax.Array    # Rayleigh quotient v^T H v, signed; largest in magnitude
  eigenvector: object      # unit pytree like params; pass as `init` to warm-start
  residual: jax.Array      # ||H v - eigenvalue v||, an a-posteriori error bound
  num_iters: jax.Array     # Hessian-vector products that changed the estimate
  converged: jax.Array     # relative change of the eigenvalue fell below tol


class _PowerState(NamedTuple):
  vector: object
  eigenvalue: jax.Array
  residual: jax.Array
  num_iters: jax.Array
  converged: jax.Array


def sharpness(loss_fn: LossFn, params, batch, *, key: jax.Array | None = None,
              init=None, num_iters: int = 20, tol: float = 1e-3,
              unroll: bool | None = None) -> SharpnessResult:
  """Largest-magnitude Hessian eigenvalue of the minibatch loss by power iteration.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    key: PRNG key for a random Gaussian start (used when `init` is None).
    init: a start vector, e.g. the previous round's `eigenvector` (warm start).
    num_iters: maximum number of Hessian-vector products.
    tol: stop once |lambda_k - lambda_{k-1}| <= tol * |lambda_k|.
    unroll: unroll the iterations into straight-line code (default: on CPU for at most
      8 iterations; XLA:CPU runs backward convolutions inside loops slowly). Unrolled,
      all `num_iters` HVPs run and the estimate is frozen after convergence; otherwise
      a while loop exits early. Call with `num_iters=1` and
      `init=previous.eigenvector` to drive the iteration from Python, jitted once, with
      early exit on any backend.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  if init is None:
    if key is None:
      raise ValueError("sharpness needs a start: pass key= (random start) or init= (warm start)")
    init = tm.tree_random_like(key, params)
  init = tm.tree_normalize(_as_tangent(params, init))

  def step(state: _PowerState) -> _PowerState:
    hv = _hvp(loss_fn, params, batch, state.vector)
    eigenvalue = tm.tree_vdot(state.vector, hv)
    hv_norm_sq = tm.tree_norm_sq(hv)
    residual = tm.tree_norm(tm.tree_axpy(-eigenvalue, state.vector, hv))
    change = jnp.abs(eigenvalue - state.eigenvalue)
    converged = (state.num_iters > 0) & (change <= tol * jnp.abs(eigenvalue))
    vector = tm.tree_scale(jax.lax.rsqrt(hv_norm_sq), hv)
    return _PowerState(vector, eigenvalue, residual, state.num_iters + 1, converged)

  zero = jnp.zeros((), tm.tree_vdot(init, init).dtype)
  state = _PowerState(init, zero, zero, jnp.zeros((), jnp.int32), jnp.zeros((), bool))
  if _loops.resolve_unroll(unroll, num_iters):
    for _ in range(num_iters):
      new = step(state)
      state = jax.tree.map(lambda old, nw: jnp.where(state.converged, old, nw), state, new)
  else:
    state = jax.lax.while_loop(
        lambda s: (s.num_iters < num_iters) & ~s.converged, step, state)
  return SharpnessResult(state.eigenvalue, state.vector, state.residual,
                         state.num_iters, state.converged)
