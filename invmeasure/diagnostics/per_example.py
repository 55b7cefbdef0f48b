"""Instruments from per-example gradients of one minibatch (Cockpit's, and a few more).

For a minibatch of B examples with per-example losses l_i, per-example gradients
g_i = grad l_i and their mean g (the minibatch gradient), `per_example_stats` computes,
in one pass, the few reductions every instrument here needs:
  losses       l_i                       [B]
  sq_norms     |g_i|^2                   [B]
  mean_dots    g_i . g                   [B]
  direction_dots  g_i . d_k for given directions d_k   [K, B]
  sum_sq_dev   sum_i (g_i - g)^2, elementwise  (a pytree like params; optional)
Per-example gradients are made a chunk of `chunk_size` examples at a time, reduced at
once and dropped, so memory grows with the chunk, not with B. The elementwise squares are
summed about g, not about 0: sum_i g_i^2 / B - g^2 loses every digit of a parameter whose
gradient varies little across examples compared with its mean (GSNR's large terms) in
float32. g comes from a backward pass of its own when not given: on CPU that is cheaper
than averaging the g_i already made (XLA fuses neither the average nor squares about it).

From them, with Cockpit's definitions (Schneider, Dangel and Hennig, 2021):
  norm_test   sqrt(tr S / B) / |g|                     Byrd et al. 2012, eq. 3.9
  inner_test  sqrt(Var_i(g_i . g) / B) / |g|^2         Bollapragada et al. 2018, eq. 2.6
  ortho_test  sqrt(E_i |g_i - (g_i.g / |g|^2) g|^2 / B) / |g|   ibid., eq. 3.3
  mean_gsnr   mean_j g_j^2 / (Var_i g_ij + eps)        Liu et al. 2020 (population variance)
  cabs_batch_size  lr tr S (B - 1) / (B l)            Balles et al. 2017, eq. 22 (SGD)
  early_stopping   1 - B mean_j g_j^2 / (S_jj + eps)   Mahsereci et al. 2017, eq. 7 (SGD)
  tic         (1/B) sum_i |g_i|^2 / (tr H + eps)       Thomas et al. 2020, trace form
  noise_scale tr S / |g|^2 and tr S / (|g|^2 - tr S / B)   McCandlish et al. 2018, B_simple
with S the sample covariance of the g_i (divisor B - 1). The tests are the largest
theta (or nu) for which each would pass: small means the batch is large enough.
`normalized_step_length` is Cockpit's alpha: a noise-aware quadratic fit along the step
from the losses and projected gradients at both of its ends (it spans two steps: carry
`StepLengthPoint` from one to the next).

Over a batch sharded across devices, XLA (jaxlib 0.10.2) partitions the vmapped
per-example gradient of a convolution's kernel wrongly: every device but the first
returns wrong values, without an error. Traced under a mesh (`jax.set_mesh`, or
`jax.sharding.use_abstract_mesh` as the driver's train step is), the per-example pass
therefore takes the whole batch on every device (each device then differentiates all B
examples); a batch sharded without a mesh in context is the caller's to replicate
(`jax.lax.with_sharding_constraint`).

A loss with BatchNorm in training mode has no per-example gradient (each example's loss
depends on the whole batch through the statistics). Pass instead the loss with the
statistics frozen at the batch's own (`invmeasure.models.losses.frozen_batch_stats_loss_fn`):
the per-example losses then average to the batch loss, and g is the gradient with the
statistics held fixed (it differs from the training gradient by the path through them).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from invmeasure.diagnostics import _checks
from invmeasure.diagnostics import _tree_math as tm
from invmeasure.diagnostics._types import Batch, LossFn, Params


class PerExampleStats(NamedTuple):
  """Reductions of the per-example gradients of one minibatch (see the module doc)."""
  losses: jax.Array          # [B] per-example losses
  sq_norms: jax.Array        # [B] |g_i|^2
  mean_dots: jax.Array       # [B] g_i . g, g the mean of the g_i
  direction_dots: jax.Array  # [K, B] g_i . d_k, one row per direction passed
  sum_sq_dev: Params | None  # sum_i (g_i - g)^2 elementwise, like params (None: not asked)
  mean_gradient: Params      # g

  @property
  def batch_size(self) -> int:
    return int(self.losses.shape[0])

  @property
  def grad_norm_sq(self) -> jax.Array:
    """|g|^2."""
    return tm.tree_norm_sq(self.mean_gradient)

  @property
  def covariance_trace(self) -> jax.Array:
    """tr S = (sum_i |g_i|^2 - B |g|^2) / (B - 1), the per-example covariance's trace."""
    b = self.batch_size
    return (jnp.sum(self.sq_norms) - b * self.grad_norm_sq) / (b - 1)


def per_example_stats(loss_fn: LossFn, params: Params, batch: Batch, *,
                      mean_gradient: Params | None = None,
                      directions: Sequence[Params] = (),
                      sum_squares: bool = True,
                      chunk_size: int | None = None,
                      unroll: bool | None = None) -> PerExampleStats:
  """Per-example losses, gradient norms and dot products of one minibatch, in one pass.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss of a minibatch; called on
      minibatches of one example, so it must treat examples independently (for
      BatchNorm in training mode, freeze the statistics: see the module doc).
    params: any pytree of floating-point arrays.
    batch: a pytree whose leaves share a leading axis of B >= 2 examples.
    mean_gradient: g, the mean of the per-example gradients, if already known (for a
      loss that treats examples independently, the minibatch gradient); else computed.
      The squares are summed about it (a g off the mean by e adds B e^2 to them).
    directions: pytrees like `params` to project every g_i on.
    sum_squares: also accumulate the elementwise sum_i (g_i - g)^2 (GSNR, early stopping).
    chunk_size: examples differentiated at once (a divisor of B; default B). Peak
      memory holds `chunk_size` gradients.
    unroll: chunks in straight-line code (default on CPU, where XLA runs backward
      convolutions inside loops slowly) or in a `lax.scan` (elsewhere: one compiled body).

  Returns:
    `PerExampleStats`.
  """
  _checks.check_params(params)
  size = _checks.leading_axis_size(batch, "batch")
  if size < 2:
    raise ValueError(f"per-example statistics need a batch of B >= 2 examples, got B={size}")
  chunk = size if chunk_size is None else int(chunk_size)
  if chunk < 1 or size % chunk:
    raise ValueError(f"chunk_size={chunk_size} must divide the batch size {size}")
  num_chunks = size // chunk
  if unroll is None:
    unroll = jax.default_backend() == "cpu" or num_chunks == 1

  def example_loss(p: Params, example: Batch) -> jax.Array:
    return loss_fn(p, jax.tree.map(lambda leaf: leaf[None], example))

  value_and_grads = jax.vmap(jax.value_and_grad(example_loss), (None, 0))
  batch = _whole_on_every_device(batch)

  if mean_gradient is None:  # a backward pass of its own: cheaper on CPU than the g_i's mean
    mean_gradient = jax.grad(
        lambda p: jnp.mean(jax.vmap(example_loss, (None, 0))(p, batch)))(params)
  vectors = [mean_gradient, *directions]

  def reduce_chunk(examples: Batch):
    losses, grads = value_and_grads(params, examples)
    leaves = jax.tree.leaves(grads)
    sq_norms = _batched_sum([jnp.square(g.astype(_acc(g))) for g in leaves])
    dots = jnp.stack([
        _batched_sum([g.astype(_acc(g)) * v.astype(_acc(g))
                      for g, v in zip(leaves, jax.tree.leaves(vector))])
        for vector in vectors])
    sum_sq_dev = (jax.tree.map(lambda g, m: jnp.sum(jnp.square(g.astype(_acc(g))
                                                               - m.astype(_acc(g))), 0),
                               grads, mean_gradient) if sum_squares else None)
    return losses, sq_norms, dots, sum_sq_dev

  if num_chunks == 1:
    losses, sq_norms, dots, sum_sq_dev = reduce_chunk(batch)
  elif unroll:
    parts = [reduce_chunk(jax.tree.map(lambda leaf: leaf[k * chunk:(k + 1) * chunk], batch))
             for k in range(num_chunks)]
    losses = jnp.concatenate([p[0] for p in parts])
    sq_norms = jnp.concatenate([p[1] for p in parts])
    dots = jnp.concatenate([p[2] for p in parts], axis=1)
    sum_sq_dev = (jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *[p[3] for p in parts])
                  if sum_squares else None)
  else:
    chunks = jax.tree.map(lambda leaf: leaf.reshape((num_chunks, chunk) + leaf.shape[1:]),
                          batch)

    def body(carry, examples):
      losses, sq_norms, dots, sum_sq_dev = reduce_chunk(examples)
      carry = jax.tree.map(jnp.add, carry, sum_sq_dev) if sum_squares else carry
      return carry, (losses, sq_norms, dots)

    init = (jax.tree.map(lambda p: jnp.zeros(p.shape, _acc(p)), params)
            if sum_squares else None)
    sum_sq_dev, (losses, sq_norms, dots) = jax.lax.scan(body, init, chunks)
    losses, sq_norms = losses.reshape(size), sq_norms.reshape(size)
    dots = jnp.moveaxis(dots, 0, 1).reshape(len(vectors), size)
  return PerExampleStats(losses=losses, sq_norms=sq_norms, mean_dots=dots[0],
                         direction_dots=dots[1:], sum_sq_dev=sum_sq_dev,
                         mean_gradient=mean_gradient)


def _whole_on_every_device(batch: Batch) -> Batch:
  """`batch` replicated over the mesh in context, if any (see the module doc: a sharded
  batch gets wrong per-example convolution gradients)."""
  if jax.sharding.get_abstract_mesh().size <= 1:
    return batch
  return jax.lax.with_sharding_constraint(batch, jax.sharding.PartitionSpec())


def _acc(x) -> jnp.dtype:
  return jnp.promote_types(x.dtype, jnp.float32)


def _batched_sum(leaves: list[jax.Array]) -> jax.Array:
  """Per-row sums over every axis but the first, added over leaves."""
  parts = [jnp.sum(leaf.reshape(leaf.shape[0], -1), axis=1) for leaf in leaves]
  return sum(parts[1:], parts[0])


def norm_test(stats: PerExampleStats) -> jax.Array:
  """Byrd et al.'s norm test: the largest theta with tr(S) / B <= theta^2 |g|^2."""
  return jnp.sqrt(stats.covariance_trace / stats.batch_size / stats.grad_norm_sq)


def inner_test(stats: PerExampleStats) -> jax.Array:
  """Bollapragada et al.'s inner-product test: the largest theta with
  Var_i(g_i . g) / B <= theta^2 |g|^4 (sample variance)."""
  b, g2 = stats.batch_size, stats.grad_norm_sq
  variance = (jnp.sum(jnp.square(stats.mean_dots)) - b * g2 ** 2) / (b - 1)
  return jnp.sqrt(variance / b / g2 ** 2)


def ortho_test(stats: PerExampleStats) -> jax.Array:
  """Bollapragada et al.'s orthogonality test: the largest nu with
  Var_i |g_i - (g_i . g / |g|^2) g|^2 / B <= nu^2 |g|^2 (sample variance)."""
  b, g2 = stats.batch_size, stats.grad_norm_sq
  variance = (jnp.sum(stats.sq_norms) - jnp.sum(jnp.square(stats.mean_dots)) / g2) / (b - 1)
  return jnp.sqrt(variance / b / g2)


def _elementwise(stats: PerExampleStats, name: str) -> tuple[jax.Array, jax.Array]:
  """(g^2, sum_i (g_i - g)^2), each flattened over all leaves."""
  if stats.sum_sq_dev is None:
    raise ValueError(f"{name} needs the elementwise sum of squares: call "
                     "per_example_stats(..., sum_squares=True)")
  flat = lambda tree: jnp.concatenate([x.reshape(-1).astype(_acc(x))  # noqa: E731
                                       for x in jax.tree.leaves(tree)])
  return jnp.square(flat(stats.mean_gradient)), flat(stats.sum_sq_dev)


def mean_gsnr(stats: PerExampleStats, epsilon: float = 1e-5) -> jax.Array:
  """Mean gradient signal-to-noise ratio over all parameters,
  mean_j g_j^2 / (sum_i (g_ij - g_j)^2 / B + epsilon) (Cockpit's, population variance)."""
  g_sq, sum_sq_dev = _elementwise(stats, "mean_gsnr")
  return jnp.mean(g_sq / (sum_sq_dev / stats.batch_size + epsilon))


def early_stopping(stats: PerExampleStats, epsilon: float = 1e-5) -> jax.Array:
  """Evidence-based early stopping (Mahsereci et al. 2017, left of eq. 7),
  1 - B mean_j g_j^2 / (S_jj + epsilon): training should stop once it exceeds 0.
  Defined for SGD without momentum."""
  g_sq, sum_sq_dev = _elementwise(stats, "early_stopping")
  b = stats.batch_size
  return 1.0 - b * jnp.mean(g_sq / (sum_sq_dev / (b - 1) + epsilon))


def cabs_batch_size(stats: PerExampleStats, learning_rate: jax.Array | float) -> jax.Array:
  """CABS's batch size (Balles et al. 2017, eq. 22), lr tr(Sigma) / loss, the loss the
  minibatch's mean and tr(Sigma) estimated as Cockpit does, with divisor B:
  (sum_i |g_i|^2 - B |g|^2) / B = tr(S) (B - 1) / B. Defined for SGD without momentum at
  learning rate `learning_rate`."""
  b = stats.batch_size
  return learning_rate * stats.covariance_trace * (b - 1) / b / jnp.mean(stats.losses)


def tic(stats: PerExampleStats, hessian_trace: jax.Array, epsilon: float = 1e-7) -> jax.Array:
  """Takeuchi information criterion, trace form: tr(C) / (tr(H) + epsilon), with
  C = (1/B) sum_i g_i g_i^T the uncentred second moment and `hessian_trace` tr(H) of the
  minibatch loss (e.g. `hessian_trace(...).estimate`, Hutchinson's)."""
  return jnp.mean(stats.sq_norms) / (hessian_trace + epsilon)


class NoiseScale(NamedTuple):
  """McCandlish et al.'s simple gradient noise scale B_simple = tr(Sigma) / |G|^2."""
  simple: jax.Array    # tr S / |g|^2 (|g|^2 overestimates |G|^2 by tr Sigma / B)
  unbiased: jax.Array  # tr S / (|g|^2 - tr S / B), both terms unbiased


def noise_scale(stats: PerExampleStats) -> NoiseScale:
  """The gradient noise scale from the per-example covariance; see `NoiseScale`."""
  trace, g2 = stats.covariance_trace, stats.grad_norm_sq
  return NoiseScale(trace / g2, trace / (g2 - trace / stats.batch_size))


class StepLengthPoint(NamedTuple):
  """What Cockpit's alpha observes at one end of a step of length t along direction d."""
  loss: jax.Array        # mean minibatch loss
  loss_var: jax.Array    # sample variance of the per-example losses
  slope: jax.Array       # mean of g_i . d / |d|
  slope_var: jax.Array   # its sample variance over examples


def step_length_point(stats: PerExampleStats, direction: int,
                      direction_norm: jax.Array) -> StepLengthPoint:
  """The observation at one end of the step along `stats`' direction number `direction`
  (`per_example_stats(..., directions=...)`) of norm `direction_norm`."""
  projections = stats.direction_dots[direction] / direction_norm
  return StepLengthPoint(jnp.mean(stats.losses), jnp.var(stats.losses, ddof=1),
                         jnp.mean(projections), jnp.var(projections, ddof=1))


def normalized_step_length(start: StepLengthPoint, end: StepLengthPoint,
                           step_size: jax.Array) -> jax.Array:
  """Cockpit's normalised step length alpha of a step of length `step_size` = |d|.

  Fits a quadratic q(s) = w0 + w1 s + w2 s^2 along the step to the losses and projected
  gradients at s = 0 and s = t by least squares weighted by their variances (a zero
  variance counts as 1e-10), and returns 2 t / s* - 1 with s* = -w1 / w2 the far point at
  the fit's starting height: -1 means the step reached the minimum of the fit... no:
  0 the minimum, -1 no move, 1 the far side; a concave fit gives -1, as Cockpit's.
  """
  t = jnp.asarray(step_size)
  dtype = jnp.result_type(t, start.loss, jnp.float32)
  t = t.astype(dtype)
  one, zero = jnp.ones((), dtype), jnp.zeros((), dtype)
  phi = jnp.stack([jnp.stack([one, zero, zero]), jnp.stack([one, t, t * t]),
                   jnp.stack([zero, one, zero]), jnp.stack([zero, one, 2 * t])])  # [4, 3]
  variances = jnp.stack([start.loss_var, end.loss_var, start.slope_var, end.slope_var]
                        ).astype(dtype)
  weights = 1.0 / jnp.where(variances == 0, 1e-10, variances)
  targets = jnp.stack([start.loss, end.loss, start.slope, end.slope]).astype(dtype)
  normal = phi.T @ (weights[:, None] * phi)
  mu = jnp.linalg.solve(normal, phi.T @ (weights * targets))
  far = -mu[1] / mu[2]
  return jnp.where(mu[2] < 0, -1.0, 2 * t / far - 1)


def layer_norms(**trees: Params) -> dict[str, jax.Array]:
  """Per-leaf norms of each pytree, keyed '<name>/<leaf path>' (e.g. 'grad/Conv_0/kernel'),
  the path's keys joined by '/': names TensorBoard groups by their first part."""
  out = {}
  for name, tree in trees.items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out[f"{name}/{_path_name(path)}"] = jnp.sqrt(jnp.sum(jnp.square(leaf.astype(_acc(leaf)))))
  return out


def _path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


__all__ = ["PerExampleStats", "per_example_stats", "norm_test", "inner_test", "ortho_test",
           "mean_gsnr", "early_stopping", "cabs_batch_size", "tic", "NoiseScale",
           "noise_scale", "StepLengthPoint", "step_length_point", "normalized_step_length",
           "layer_norms"]
