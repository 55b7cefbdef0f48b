"""Full-gradient, noise and loss statistics from K minibatches, in one pass.

For minibatch gradients g_1..g_K with mean g_bar and S = sum_k ||g_k - g_bar||^2:
  grad_norm              = ||g_bar||
  noise_norm             = sqrt(S / K), the RMS of ||g_k - g_bar||
  noise_norm_sq_unbiased = S / (K - 1), unbiased for E||g_B - grad f||^2
  grad_norm_sq_unbiased  = ||g_bar||^2 - S / (K (K - 1)), unbiased for ||grad f||^2
(||g_bar||^2 alone overestimates ||grad f||^2 by about noise^2 / K: the paper's A.2.)

The statistics are accumulated with Welford's update on pytrees, so memory is one
gradient-sized mean whatever K is, each minibatch is differentiated once (K gradients,
not the 2K of a mean pass followed by a noise pass), and the sum of squares is
numerically stable when the noise is small next to the mean.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from invmeasure.diagnostics import _checks
from invmeasure.diagnostics import _loops
from invmeasure.diagnostics import _tree_math as tm
from invmeasure.diagnostics._types import Batch, LossFn, Params


class GradientStatsState(NamedTuple):
  """Running sums of the streaming form; build with `gradient_stats_init`."""
  count: jax.Array  # type: ignore[assignment]  # minibatches seen (shadows tuple.count)
  loss_mean: jax.Array    # running mean of the minibatch losses
  grad_mean: Params       # running mean gradient, a pytree like params
  sum_sq_dev: jax.Array   # S = sum_k ||g_k - mean||^2 (Welford)


class GradientStats(NamedTuple):
  """Loss, gradient and noise statistics of K minibatches (see the module doc)."""
  loss: jax.Array                    # mean minibatch loss
  grad_norm: jax.Array               # ||g_bar||
  noise_norm: jax.Array              # sqrt(S / K)
  grad_norm_sq_unbiased: jax.Array   # ||g_bar||^2 - S / (K (K - 1))
  noise_norm_sq_unbiased: jax.Array  # S / (K - 1)
  mean_gradient: Params              # g_bar, a pytree like params
  num_minibatches: jax.Array         # K


def gradient_stats_init(params: Params) -> GradientStatsState:
  """Empty statistics for gradients shaped like `params`."""
  _checks.check_params(params)
  acc = jnp.promote_types(jnp.result_type(*jax.tree.leaves(params)), jnp.float32)
  zero = jnp.zeros((), acc)
  return GradientStatsState(jnp.zeros((), jnp.int32), zero, tm.tree_zeros_like(params), zero)


def gradient_stats_accumulate(state: GradientStatsState, loss: jax.Array,
                              grad: Params) -> GradientStatsState:
  """Welford update with one minibatch's loss and gradient (computed elsewhere)."""
  count = state.count + 1
  inv = 1.0 / count.astype(state.sum_sq_dev.dtype)
  delta = tm.tree_sub(grad, state.grad_mean)
  grad_mean = tm.tree_axpy(inv, delta, state.grad_mean)
  # <g - old mean, g - new mean> is Welford's increment of the total sum of squares.
  sum_sq_dev = state.sum_sq_dev + tm.tree_vdot(delta, tm.tree_sub(grad, grad_mean))
  loss_mean = state.loss_mean + (loss - state.loss_mean) * inv
  return GradientStatsState(count, loss_mean, grad_mean, sum_sq_dev)


def gradient_stats_update(loss_fn: LossFn, state: GradientStatsState, params: Params,
                          batch: Batch) -> GradientStatsState:
  """Differentiates `loss_fn` on one minibatch and folds it into `state`.

  Jit it (e.g. `jax.jit(functools.partial(gradient_stats_update, loss_fn))`) and call
  it once per minibatch from an input pipeline: the streaming form of `gradient_stats`.
  """
  loss, grad = jax.value_and_grad(loss_fn)(params, batch)
  return gradient_stats_accumulate(state, loss, grad)


def gradient_stats_finalize(state: GradientStatsState) -> GradientStats:
  """Statistics of the minibatches seen. Noise terms are NaN with fewer than 2."""
  k = state.count.astype(state.sum_sq_dev.dtype)
  s = state.sum_sq_dev
  mean_sq = tm.tree_norm_sq(state.grad_mean)
  return GradientStats(
      loss=state.loss_mean,
      grad_norm=jnp.sqrt(mean_sq),
      noise_norm=jnp.sqrt(s / k),
      grad_norm_sq_unbiased=mean_sq - s / (k * (k - 1)),
      noise_norm_sq_unbiased=s / (k - 1),
      mean_gradient=state.grad_mean,
      num_minibatches=state.count,
  )


def gradient_stats(loss_fn: LossFn, params: Params, batches: Batch, *,
                   unroll: bool | None = None) -> GradientStats:
  """Loss, mean-gradient norm and gradient noise over K minibatches in one pass.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of one minibatch.
    params: any pytree of floating-point arrays.
    batches: a pytree whose leaves have a leading axis K >= 2; slice k along it is
      one minibatch, what `loss_fn` takes. (When the K minibatches do not fit in
      memory at once, feed them one by one to `gradient_stats_update`.)
    unroll: how the loop over minibatches runs (see `invmeasure.diagnostics` on
      loops); the default is fast on every backend.

  Returns:
    `GradientStats` of the K minibatch gradients.
  """
  k = _checks.leading_axis_size(batches)
  if k < 2:
    raise ValueError(
        f"gradient_stats needs K >= 2 minibatches to estimate the noise, got K={k}; "
        "stack more minibatches on the leading axis")
  _checks.check_params(params)
  one_batch = jax.tree.map(lambda b: jax.ShapeDtypeStruct(b.shape[1:], b.dtype), batches)
  _checks.check_scalar_loss(loss_fn, params, one_batch)
  return _loops.run(_GRADIENT_STATS, loss_fn, (params, batches), k, unroll=unroll)


def _stats_init(loss_fn: LossFn, operands) -> GradientStatsState:
  params, _ = operands
  return gradient_stats_init(params)


def _stats_step(loss_fn: LossFn, operands, k, state: GradientStatsState) -> GradientStatsState:
  params, batches = operands
  batch = jax.tree.map(lambda leaf: leaf[k], batches)
  return gradient_stats_update(loss_fn, state, params, batch)


_GRADIENT_STATS = _loops.Algorithm(
    _stats_init, _stats_step, lambda loss_fn, operands, state: gradient_stats_finalize(state))
