"""The Hessian's spectrum: Hutchinson trace, Lanczos eigenvalues and spectral density.

All three are built on Hessian-vector products of the minibatch loss.
- `hessian_trace`: Hutchinson's estimator, tr(H) = E[z^T H z] for Rademacher z.
- `lanczos`: tridiagonalisation T = V^T H V on a Krylov basis V, with full
  reorthogonalisation. The eigenvalues of T (Ritz values) approximate the extreme
  eigenvalues of H first; `top_hessian_eigenvalues` returns the largest k.
- `spectral_density`: stochastic Lanczos quadrature (Ghorbani, Krishnan and Xiao, 2019).
  Lanczos from a unit probe v turns v^T f(H) v into the Gauss quadrature
  sum_j w_j f(node_j), nodes the Ritz values and w_j the squared first components of
  T's eigenvectors. Averaged over probes, dim * sum_j w_j f(node_j) estimates tr(f(H))
  (`slq_trace`) and the nodes smoothed by Gaussians give the spectral density
  (`density_on_grid`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from invmeasure.diagnostics import _checks
from invmeasure.diagnostics import _loops
from invmeasure.diagnostics import _tree_math as tm
from invmeasure.diagnostics._types import Batch, LossFn, Params
from invmeasure.diagnostics.curvature import _as_tangent, _hvp


class TraceResult(NamedTuple):
  """A Monte Carlo trace estimate."""
  estimate: jax.Array     # mean of the per-probe estimates
  stderr: jax.Array       # sample standard deviation / sqrt(num_samples); NaN for one
  num_samples: jax.Array  # probes averaged


class LanczosResult(NamedTuple):
  """Lanczos tridiagonalisation T = V^T H V of the Hessian.

  When `num_iters` exceeds the number of parameters, only that many directions exist:
  the entries past it are padding (alphas and ritz_values repeat the smallest Ritz
  value, betas are 0, Ritz vectors are 0), so T's eigenvalues are still `ritz_values`.
  """
  alphas: jax.Array       # [num_iters] diagonal of T
  betas: jax.Array        # [num_iters - 1] off-diagonal of T, >= 0
  ritz_values: jax.Array  # [num_iters] eigenvalues of T, sorted descending
  ritz_vectors: Params | None  # like params with a leading axis top_k, or None


class HessianEigenpairs(NamedTuple):
  """The largest Hessian eigenvalues (descending) and, if asked, their eigenvectors."""
  eigenvalues: jax.Array  # [k]
  eigenvectors: Params | None  # unit, like params with a leading axis k, or None


class SpectralDensity(NamedTuple):
  """Stochastic Lanczos quadrature rules, one per probe.

  For probe p, sum_j weights[p, j] f(nodes[p, j]) approximates v_p^T f(H) v_p with
  v_p the unit probe; each row of `weights` sums to 1.
  """
  nodes: jax.Array    # [num_probes, num_iters] Ritz values
  weights: jax.Array  # [num_probes, num_iters] squared first components, >= 0


def hessian_trace(loss_fn: LossFn, params: Params, batch: Batch, *, key: jax.Array,
                  num_samples: int,
                  unroll: bool | None = None) -> TraceResult:
  """Hutchinson estimate of tr(H), the Hessian trace of the minibatch loss.

  Averages z^T H z over `num_samples` Rademacher probes z (entries +-1), whose
  variance 2 sum_{i != j} H_ij^2 is the smallest of any probe with i.i.d. unit-variance
  entries. Probe i is drawn from `jax.random.fold_in(key, i)`.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    key: PRNG key for the probes.
    num_samples: number of probes (one Hessian-vector product each), >= 1. With a
      single probe the standard error is NaN.
    unroll: how the probe loop runs (see `invmeasure.diagnostics` on loops); the
      default is fast on every backend.

  Returns:
    `TraceResult` with the estimate and its standard error.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  _check_count("num_samples", num_samples)
  return _loops.run(_HUTCHINSON, (loss_fn, num_samples), (params, batch, key), num_samples,
                    unroll=unroll)


def lanczos(loss_fn: LossFn, params: Params, batch: Batch, *, key: jax.Array | None = None,
            init: Params | None = None, num_iters: int, top_k: int = 1, return_vectors: bool = False,
            unroll: bool | None = None) -> LanczosResult:
  """Lanczos tridiagonalisation of the Hessian of the minibatch loss.

  Builds an orthonormal basis v_0..v_{m-1} of the Krylov space of H from a start
  vector, reorthogonalising every new vector against all previous ones (twice, so the
  basis stays orthonormal to working precision and no spurious copies of converged
  eigenvalues appear). The basis is kept as a pytree like `params` with a leading axis
  of size `num_iters`: memory is num_iters times the parameters.

  Breakdown: if the Krylov space becomes invariant (its residual vanishes, e.g. when
  the Hessian's rank is below `num_iters`), the iteration restarts from a new
  direction orthogonal to the basis, and the coupling of that direction to the old
  residual is kept as the off-diagonal entry, so T = V^T H V still holds and the Ritz
  values stay correct. Iterations past the number of parameters are masked (see
  `LanczosResult`). Nothing becomes NaN.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    key: PRNG key for a random Gaussian start (used when `init` is None).
    init: a nonzero start vector, a pytree like `params`.
    num_iters: Hessian-vector products, the size m of T, >= 1.
    top_k: number of Ritz vectors (largest Ritz values first) to return.
    return_vectors: also return the top-k Ritz vectors (memory: top_k times params).
    unroll: how the loop runs (see `invmeasure.diagnostics` on loops); the default is
      fast on every backend.

  Returns:
    `LanczosResult`: T's coefficients, its eigenvalues (descending) and optionally the
    top-k Ritz vectors.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  _check_count("num_iters", num_iters)
  if return_vectors:
    _check_count("top_k", top_k)
    if top_k > num_iters:
      raise ValueError(f"top_k must be <= num_iters, got top_k={top_k} > {num_iters}")
  if init is None and key is None:
    raise ValueError("lanczos needs a start: pass key= (random start) or init= (given start)")
  operands = (params, batch, key if init is None else None, init)
  return _loops.run(_LANCZOS, (loss_fn, num_iters, top_k if return_vectors else 0), operands,
                    min(num_iters, tm.tree_size(params)), unroll=unroll)


def top_hessian_eigenvalues(loss_fn: LossFn, params: Params, batch: Batch, *, key: jax.Array,
                            k: int,
                            num_iters: int, return_vectors: bool = False,
                            unroll: bool | None = None) -> HessianEigenpairs:
  """The k largest (most positive) Hessian eigenvalues, by Lanczos.

  The top Ritz values converge first; `num_iters` of 2k to 3k plus ten or so is
  usually enough when the top eigenvalues stand apart from the bulk. Check with a
  larger `num_iters` when they do not. See `lanczos` for memory and breakdown.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    key: PRNG key for the random start.
    k: number of eigenvalues, 1 <= k <= num_iters.
    num_iters: Lanczos iterations (Hessian-vector products).
    return_vectors: also return unit eigenvector estimates (Ritz vectors).
    unroll: see `lanczos`.
  """
  _check_count("k", k)
  _check_count("num_iters", num_iters)
  if k > num_iters:
    raise ValueError(f"k must be <= num_iters, got k={k} > num_iters={num_iters}")
  result = lanczos(loss_fn, params, batch, key=key, num_iters=num_iters, top_k=k,
                   return_vectors=return_vectors, unroll=unroll)
  return HessianEigenpairs(result.ritz_values[:k], result.ritz_vectors)


def spectral_density(loss_fn: LossFn, params: Params, batch: Batch, *, key: jax.Array,
                     num_probes: int,
                     num_iters: int, probe: str = "rademacher",
                     unroll: bool | None = None) -> SpectralDensity:
  """Stochastic Lanczos quadrature of the Hessian's eigenvalue density.

  Runs `num_iters` Lanczos iterations from each of `num_probes` random unit probes.
  The result is a Gauss quadrature rule per probe; turn it into a density with
  `density_on_grid` and into trace estimates tr(f(H)) with `slq_trace`. Costs
  num_probes * num_iters Hessian-vector products; memory is one Lanczos basis
  (num_iters times the parameters), the probes running one after another.

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar` mean minibatch loss.
    params: any pytree of floating-point arrays.
    batch: what `loss_fn` takes.
    key: PRNG key for the probes.
    num_probes: number of probes, >= 1.
    num_iters: Lanczos iterations per probe (nodes per rule), >= 1.
    probe: 'rademacher' (the default) or 'normal'. Probes are normalised to unit
      length; Rademacher ones all have norm sqrt(dim), so `slq_trace` is then unbiased,
      while with Gaussian ones it is a ratio estimate (consistent, slightly biased).
      Probe p is drawn as in `hessian_trace`, from `jax.random.fold_in(key, p)`.
    unroll: how the loops run (see `invmeasure.diagnostics` on loops); the default is
      fast on every backend. Inside jax.jit on CPU, the default unrolls when probes
      times iterations is at most 8.
  """
  _checks.check_params(params)
  _checks.check_scalar_loss(loss_fn, params, batch)
  _check_count("num_probes", num_probes)
  _check_count("num_iters", num_iters)
  if probe not in ("rademacher", "normal"):
    raise ValueError(f"probe must be 'rademacher' or 'normal', got {probe!r}")
  static = (loss_fn, num_iters, probe)
  num_steps = min(num_iters, tm.tree_size(params))
  rule = lambda p, do_unroll: _loops.run(_QUADRATURE_RULE, static, (params, batch, key, p),
                                         num_steps, unroll=do_unroll)
  if _loops.is_concrete((params, batch, key)):
    # Each probe's Lanczos run is compiled once and driven as `run` chooses.
    rows = [rule(p, unroll) for p in range(num_probes)]
    return SpectralDensity(*(jnp.stack(column) for column in zip(*rows)))
  do_unroll = _loops.resolve_unroll(unroll, num_probes * num_iters)

  def body(p, rules):
    node_row, weight_row = rule(p, do_unroll)
    return rules[0].at[p].set(node_row), rules[1].at[p].set(weight_row)

  empty = jnp.zeros((num_probes, num_iters), _acc_dtype(params))
  nodes, weights = _loops.fori_loop(num_probes, body, (empty, empty), unroll=do_unroll)
  return SpectralDensity(nodes, weights)


def density_on_grid(density: SpectralDensity, grid: jax.Array,
                    sigma: float | jax.Array) -> jax.Array:
  """The spectral density smoothed by a Gaussian of width `sigma`, on `grid`.

  Returns mean_p sum_j weights[p, j] N(grid; nodes[p, j], sigma^2), an array shaped
  like `grid` that integrates to 1 over a grid covering the spectrum plus a few sigma.
  """
  if isinstance(sigma, (int, float)) and not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma}")
  grid = jnp.asarray(grid)
  z = (grid[..., None, None] - density.nodes) / sigma
  kernel = jnp.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2.0 * math.pi))
  return jnp.mean(jnp.sum(density.weights * kernel, axis=-1), axis=-1)


def slq_trace(density: SpectralDensity, dim: int,
              fn: Callable[[jax.Array], jax.Array] | None = None) -> TraceResult:
  """Estimate of tr(f(H)) from stochastic Lanczos quadrature.

  Per probe, dim * sum_j weights[p, j] f(nodes[p, j]); averaged over probes with its
  standard error. The quadrature integrates polynomials of degree < 2 * num_iters
  exactly, so for those the error is only the probes' sampling error; with Rademacher
  probes and f(x) = x the estimate equals `hessian_trace` with the same key and
  num_samples = num_probes.

  Args:
    density: the output of `spectral_density`.
    dim: the number of parameters (the size of H).
    fn: elementwise f; the identity (the trace of H) when None.
  """
  values = density.nodes if fn is None else fn(density.nodes)
  per_probe = dim * jnp.sum(density.weights * values, axis=-1)
  return _mean_and_stderr(per_probe)


def _trace_init(static, operands) -> jax.Array:
  _, num_samples = static
  return jnp.zeros((num_samples,), _acc_dtype(operands[0]))


def _trace_step(static, operands, i, samples: jax.Array) -> jax.Array:
  loss_fn, _ = static
  params, batch, key = operands
  probe = tm.tree_random_like(jax.random.fold_in(key, i), params, "rademacher")
  quad = tm.tree_vdot(probe, _hvp(loss_fn, params, batch, probe))
  return samples.at[i].set(quad.astype(samples.dtype))


_HUTCHINSON = _loops.Algorithm(
    _trace_init, _trace_step, lambda static, operands, samples: _mean_and_stderr(samples))


class _LanczosState(NamedTuple):
  basis: Params        # rows v_0..v_{num-1} (zero past the current one)
  alphas: jax.Array
  betas: jax.Array
  vector: Params       # the next basis vector
  scale: jax.Array     # largest ||H v_j|| so far: the breakdown test's reference


def _lanczos_start(num_iters: int, params, start) -> _LanczosState:
  """The state before the first of min(num_iters, dim) iterations: no more directions exist."""
  num = min(num_iters, tm.tree_size(params))
  acc = _acc_dtype(params)
  start = _as_tangent(params, start)
  basis = jax.tree.map(lambda leaf: jnp.zeros((num,) + leaf.shape, leaf.dtype), params)
  vector = tm.tree_scale(jax.lax.rsqrt(tm.tree_norm_sq(start)), start)
  zeros = jnp.zeros((num,), acc)
  return _LanczosState(basis, zeros, zeros, vector, jnp.zeros((), acc))


def _lanczos_step(loss_fn: LossFn, params, batch, j, state: _LanczosState) -> _LanczosState:
  """Iteration j of Lanczos with full reorthogonalisation."""
  acc = state.alphas.dtype
  tol = math.sqrt(float(jnp.finfo(acc).eps))
  basis = jax.tree.map(lambda rows, leaf: rows.at[j].set(leaf), state.basis, state.vector)
  hv = _hvp(loss_fn, params, batch, state.vector)
  alpha = tm.tree_vdot(state.vector, hv)
  scale = jnp.maximum(state.scale, tm.tree_norm(hv))
  # Rows past j are still zero, so projecting on the whole basis is projecting on the
  # vectors built so far. (Slicing them off when unrolled makes every iteration a
  # different shape, and XLA then compiles several times more slowly.)
  residual = _orthogonalize(basis, hv)
  beta = tm.tree_norm(residual)

  def proceed():
    return tm.tree_scale(1.0 / beta, residual), beta

  def restart():
    fresh = _orthogonalize(basis, _least_covered_coordinate(basis))
    norm = tm.tree_norm(fresh)
    fresh = tm.tree_scale(jnp.where(norm > 0, 1.0 / norm, 0.0), fresh)
    # H v_j = sum_i T_ij v_i + residual, so T_{j+1,j} = <v_{j+1}, residual>: the
    # (small) coupling keeps T = V^T H V exact. Flip the sign to keep it >= 0.
    coupling = tm.tree_vdot(fresh, residual)
    sign = jnp.where(coupling < 0, -1.0, 1.0).astype(acc)
    return tm.tree_scale(sign, fresh), jnp.abs(coupling)

  vector, beta = jax.lax.cond(beta <= tol * scale, restart, proceed)
  return _LanczosState(basis, state.alphas.at[j].set(alpha.astype(acc)),
                       state.betas.at[j].set(beta.astype(acc)), vector, scale)


def _lanczos_init(static, operands) -> _LanczosState:
  """From `init`, or from a Gaussian start drawn from `key`."""
  _, num_iters, _ = static
  params, _, key, init = operands
  start = tm.tree_random_like(key, params) if init is None else init
  return _lanczos_start(num_iters, params, start)


def _lanczos_iteration(static, operands, j, state: _LanczosState) -> _LanczosState:
  params, batch = operands[:2]
  return _lanczos_step(static[0], params, batch, j, state)


def _lanczos_finish(static, operands, state: _LanczosState) -> LanczosResult:
  _, num_iters, top_k = static
  # The last beta couples to a direction outside the basis: not part of T.
  ritz_values, ritz_coeffs = _tridiagonal_eigh(state.alphas, state.betas[:-1])
  vectors = None
  if top_k:
    vectors = _pad_leading(_ritz_vectors(ritz_coeffs[:, :top_k], state.basis), top_k)
  alphas = _pad(state.alphas, num_iters, ritz_values[-1])
  betas = _pad(state.betas[:-1], num_iters - 1, 0.0)
  ritz_values = _pad(ritz_values, num_iters, ritz_values[-1])
  return LanczosResult(alphas, betas, ritz_values, vectors)


# static = (loss_fn, num_iters, number of Ritz vectors to return or 0).
_LANCZOS = _loops.Algorithm(_lanczos_init, _lanczos_iteration, _lanczos_finish)


def _probe_init(static, operands) -> _LanczosState:
  """From the unit probe p, drawn from fold_in(key, p) as in `hessian_trace`."""
  _, num_iters, probe = static
  params, _, key, p = operands
  return _lanczos_start(num_iters, params,
                        tm.tree_random_like(jax.random.fold_in(key, p), params, probe))


def _quadrature_rule(static, operands, state: _LanczosState):
  """The probe's Gauss rule: (nodes, weights), padded with zero weights."""
  _, num_iters, _ = static
  ritz_values, ritz_coeffs = _tridiagonal_eigh(state.alphas, state.betas[:-1])
  return (_pad(ritz_values, num_iters, ritz_values[-1]),
          _pad(ritz_coeffs[0] ** 2, num_iters, 0.0))


# static = (loss_fn, num_iters, probe kind); operands = (params, batch, key, p).
_QUADRATURE_RULE = _loops.Algorithm(_probe_init, _lanczos_iteration, _quadrature_rule)


def _least_covered_coordinate(basis):
  """The unit coordinate vector e_i whose projection on the rows of `basis` is shortest.

  The squared projections of all e_i sum to the number of (orthonormal) rows r, so the
  shortest is at most r / dim and e_i keeps at least sqrt(1 - r / dim) of its length
  when orthogonalised: a restart direction that needs no random numbers.
  """
  leaves, treedef = jax.tree.flatten(basis)
  coverage = [jnp.sum(jnp.square(rows.astype(jnp.promote_types(rows.dtype, jnp.float32))),
                      axis=0).reshape(-1) for rows in leaves]
  lowest = jnp.stack([jnp.min(c) for c in coverage])
  chosen_leaf = jnp.argmin(lowest)
  units = []
  for index, (rows, c) in enumerate(zip(leaves, coverage)):
    # Only the first minimiser: a sum of tied coordinates may lie inside the basis.
    hit = (jnp.arange(c.shape[0]) == jnp.argmin(c)) & (chosen_leaf == index)
    units.append(hit.astype(rows.dtype).reshape(rows.shape[1:]))
  return jax.tree.unflatten(treedef, units)


def _tridiagonal_eigh(alphas: jax.Array, betas: jax.Array):
  """Eigenvalues (descending) and eigenvectors (columns) of the tridiagonal T."""
  t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
  values, vectors = jnp.linalg.eigh(t)
  return values[::-1], vectors[:, ::-1]


def _orthogonalize(basis, x):
  """x minus its projection on the rows of `basis`; two passes of Gram-Schmidt.

  One classical pass loses orthogonality in proportion to the condition of the
  projection; the second restores it to working precision ("twice is enough").
  """
  for _ in range(2):
    x = tm.tree_sub(x, _combine_rows(_row_dots(basis, x), basis))
  return x


def _row_dots(basis, x) -> jax.Array:
  """[<basis[i], x> for every row i], accumulated in at least float32."""
  # Matrix-vector products: on XLA:CPU 9-44x faster than multiplying and reducing
  # (benchmarks/loop_choices.py), and chunks keep their number small.
  def dots(rows, leaf):
    acc = jnp.promote_types(leaf.dtype, jnp.float32)
    return jnp.dot(rows.reshape(rows.shape[0], -1), leaf.reshape(-1),
                   preferred_element_type=acc)
  parts = [dots(rows, leaf) for rows, leaf in zip(jax.tree.leaves(basis), jax.tree.leaves(x))]
  return sum(parts[1:], parts[0])


def _combine_rows(coeffs: jax.Array, basis):
  """sum_i coeffs[i] basis[i], a pytree like one row of `basis`."""
  def combine(rows):
    flat = jnp.dot(coeffs, rows.reshape(rows.shape[0], -1), preferred_element_type=coeffs.dtype)
    return flat.reshape(rows.shape[1:]).astype(rows.dtype)
  return jax.tree.map(combine, basis)


def _ritz_vectors(coeffs: jax.Array, basis):
  """Rows sum_i coeffs[i, r] basis[i] for every column r: a leading axis of size r."""
  return jax.tree.map(
      lambda rows: jnp.tensordot(coeffs.T, rows.astype(coeffs.dtype), axes=1).astype(rows.dtype),
      basis)


def _pad(x: jax.Array, size: int, value) -> jax.Array:
  """x extended along its only axis to `size` entries with `value`."""
  missing = size - x.shape[0]
  if missing <= 0:
    return x
  return jnp.concatenate([x, jnp.full((missing,), value, x.dtype)])


def _pad_leading(tree, size: int):
  """Zero rows appended to every leaf's leading axis up to `size`."""
  def pad(leaf):
    missing = size - leaf.shape[0]
    if missing <= 0:
      return leaf
    return jnp.concatenate([leaf, jnp.zeros((missing,) + leaf.shape[1:], leaf.dtype)])
  return jax.tree.map(pad, tree)


def _mean_and_stderr(samples: jax.Array) -> TraceResult:
  num = samples.shape[0]
  mean = jnp.mean(samples)
  # ddof=1; one sample gives 0/0 = NaN.
  var = jnp.sum((samples - mean) ** 2) / (num - 1)
  return TraceResult(mean, jnp.sqrt(var / num), jnp.asarray(num, jnp.int32))


def _acc_dtype(params):
  return jnp.promote_types(jnp.result_type(*jax.tree.leaves(params)), jnp.float32)


def _check_count(name: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
