"""How many minibatches the paper's estimates need, at fixed weights (appendix A.2,
Figures 7 and 8).

A diagnostic round estimates the full loss f, ||grad f||^2, the noise E||g_B - grad f||^2
and the sharpness from n random training-size minibatches. `estimator_convergence`
takes one set of weights (e.g. a checkpoint, `restore.load_run_state`) and measures, for
each n, how those estimates scatter over repeated fresh draws and how far they sit from
the true values:
- ||g_bar||^2, the squared norm of the mean of n minibatch gradients, is biased up by
  noise / n (Jensen); ||g_bar||^2 - S / (n (n - 1)), with S = sum_k ||g_k - g_bar||^2, is
  unbiased (`invmeasure.diagnostics.gradient_stats` reports both).
- S / n (the root-mean-square deviation the rounds report, squared) is biased low by the
  factor (n - 1) / n; S / (n - 1) is unbiased.
- The top eigenvalue of the mean of n minibatch Hessians is biased up (the top
  eigenvalue is convex in the matrix), with no simple correction.

How it is computed. Every minibatch gradient is the mean of the gradients of its "units":
single examples when the diagnostic loss is a mean over examples and the training set
fits in memory (the *exact* mode), else whole minibatches drawn once into a pool. The
units' gradients are computed once (vmapped, never in a `lax` loop: XLA:CPU runs
backward convolutions inside loops 20-80x slower), with their Gram matrix G in float64;
every estimate for every draw then comes from G, e.g. ||g_bar||^2 = c^T G c / (n b)^2 for
the count vector c of the draw's units. Sharpness estimates run Lanczos on Hessian-vector
products of the draw's distinct units, weighted by their counts.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from invmeasure.data import batching
from invmeasure.studies import restore
from invmeasure.studies._task_cache import per_task
from invmeasure.errors import ConfigError
from invmeasure.training.state import RunState

QUANTITIES = ("loss", "grad_norm_sq", "noise_sq", "sharpness")
# Round number of the pool's minibatches in the task's own sampler, apart from any run's.
POOL_ROUND = 2**40


# --------------------------------------------------------------------------------------
# Jitted pieces over stacked units


class UnitFunctions:
  """Jitted functions of a task's diagnostic loss over stacked *units* at a state.

  A unit is one minibatch as `task.diagnostic_loss` takes it (a single example is a
  minibatch of one); `units` stacks C of them on a leading axis. Gradients and
  Hessian-vector products are on the flattened parameters (`jax.flatten_util`).
  """

  def __init__(self, task: Any):
    self.task = task

    def unit_loss(state: RunState, params, unit: dict) -> jax.Array:
      loss_fn, batch = task.diagnostic_loss(state, unit)
      return loss_fn(params, batch)

    def losses_and_grads(state: RunState, units: dict):
      def one(unit):
        loss, grad = jax.value_and_grad(unit_loss, argnums=1)(state, state.params, unit)
        return loss, ravel_pytree(grad)[0]
      return jax.vmap(one)(units)

    def weighted_hvp(state: RunState, units: dict, weights: jax.Array, vector: jax.Array):
      unravel = ravel_pytree(state.params)[1]

      def weighted_loss(params):
        losses = jax.vmap(lambda unit: unit_loss(state, params, unit))(units)
        return jnp.sum(weights * losses)

      hv = jax.jvp(jax.grad(weighted_loss), (state.params,), (unravel(vector),))[1]
      return ravel_pytree(hv)[0]

    self.unit_loss = jax.jit(unit_loss)
    self.losses_and_grads = jax.jit(losses_and_grads)
    self.weighted_hvp = jax.jit(weighted_hvp)
    self.unit_losses = jax.jit(
        lambda state, units: jax.vmap(lambda u: unit_loss(state, state.params, u))(units))


# The (cached) `UnitFunctions` of a task, so repeated studies compile once.
unit_functions = per_task(UnitFunctions)


def _take(units: dict, indices: np.ndarray, size: int) -> tuple[dict, int]:
  """`units` at `indices`, padded to `size` rows by repeating the first; (rows, real)."""
  real = len(indices)
  padded = np.concatenate([indices, np.full(size - real, indices[0], indices.dtype)])
  return {k: v[padded] for k, v in units.items()}, real


def unit_losses_and_gradients(fns: UnitFunctions, state: RunState, units: dict,
                              chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """(losses [U] float64, gradients [U, P] float32) of every unit, `chunk` at a time."""
  count = len(next(iter(units.values())))
  losses, grads = [], []
  for start in range(0, count, chunk):
    rows, real = _take(units, np.arange(start, min(start + chunk, count)), chunk)
    loss, grad = fns.losses_and_grads(state, rows)
    losses.append(np.asarray(loss, np.float64)[:real])
    grads.append(np.asarray(grad)[:real])
  return np.concatenate(losses), np.concatenate(grads)


def gram_matrix(gradients: np.ndarray) -> np.ndarray:
  """G = J J^T in float64 for gradients J [U, P] (float32 products are exact in float64,
  so only the sums round), converting ~256 MB of columns to float64 at a time."""
  columns = max(1, (1 << 25) // len(gradients))
  gram = np.zeros((len(gradients),) * 2)
  for start in range(0, gradients.shape[1], columns):
    part = gradients[:, start:start + columns].astype(np.float64)
    gram += part @ part.T
  return gram


def weighted_hvp_fn(fns: UnitFunctions, state: RunState, units: dict, indices: np.ndarray,
                    weights: np.ndarray, chunk: int) -> Callable[[np.ndarray], np.ndarray]:
  """v -> sum_j weights_j H_j v (float64) over the units at `indices`, H_j a unit's Hessian.

  The units are placed on the device once; each call runs one HVP per `chunk` of them.
  """
  staged = []
  for start in range(0, len(indices), chunk):
    part = indices[start:start + chunk]
    rows, real = _take(units, part, chunk)
    w = np.zeros(chunk, np.float32)
    w[:real] = weights[start:start + real]
    staged.append((jax.device_put(rows), jax.device_put(w)))

  def matvec(vector: np.ndarray) -> np.ndarray:
    v = jnp.asarray(vector, jnp.float32)
    parts = [fns.weighted_hvp(state, rows, w, v) for rows, w in staged]
    return sum(np.asarray(p, np.float64) for p in parts)

  return matvec


# --------------------------------------------------------------------------------------
# Top eigenvalue


class TopEigenvalue(NamedTuple):
  """The largest eigenvalue of a symmetric operator, from Lanczos."""
  value: float      # largest Ritz value (largest algebraic eigenvalue)
  residual: float   # ||A y - value y|| of its Ritz vector: |value - eigenvalue| <= this
  num_iters: int    # matrix-vector products used


def top_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], dim: int, *, num_iters: int,
                   rng: np.random.Generator, tol: float = 1e-3) -> TopEigenvalue:
  """Largest algebraic eigenvalue of a symmetric `matvec` by Lanczos from a random start.

  Full reorthogonalisation in float64 (the basis is num_iters x dim). Stops early once
  the top Ritz pair's residual is at most `tol` times its value. Lanczos reaches the top
  eigenvalue in far fewer products than power iteration when the top of the spectrum is
  crowded, so the estimates measure the sampling error, not the solver's.
  """
  num_iters = max(1, min(num_iters, dim))
  basis = np.zeros((num_iters, dim))
  v = rng.standard_normal(dim)
  basis[0] = v / np.linalg.norm(v)
  alphas, betas = [], []
  value, residual = 0.0, np.inf
  for k in range(num_iters):
    w = matvec(basis[k])
    alphas.append(float(basis[k] @ w))
    for _ in range(2):  # twice is enough (Kahan: "twice is enough")
      w = w - basis[:k + 1].T @ (basis[:k + 1] @ w)
    beta = float(np.linalg.norm(w))
    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    ritz, vectors = np.linalg.eigh(tridiagonal)
    value, residual = float(ritz[-1]), float(abs(beta * vectors[-1, -1]))
    if residual <= tol * abs(value) or k + 1 == num_iters or beta <= 1e-12 * abs(value):
      return TopEigenvalue(value, residual, k + 1)
    betas.append(beta)
    basis[k + 1] = w / beta
  return TopEigenvalue(value, residual, num_iters)


# --------------------------------------------------------------------------------------
# Estimates from the Gram matrix


def minibatch_estimates(gram: np.ndarray, losses: np.ndarray,
                        minibatches: np.ndarray) -> dict[str, float]:
  """The estimates from n minibatches, each the mean of the units in one row.

  Args:
    gram: G [U, U], the float64 Gram matrix of the units' gradients.
    losses: [U] the units' losses.
    minibatches: [n, b] unit indices; minibatch k's gradient is the mean of the
      gradients of the units in row k (a unit may repeat).

  Returns `loss` (mean minibatch loss), `grad_norm_sq` (||g_bar||^2),
  `grad_norm_sq_corrected` (||g_bar||^2 - S / (n (n - 1))), `noise_sq` (S / n) and
  `noise_sq_corrected` (S / (n - 1)), where S = sum_k ||g_k - g_bar||^2; all but the
  first two are NaN for n = 1.
  """
  n, b = minibatches.shape
  counts = np.bincount(minibatches.ravel(), minlength=len(losses)).astype(np.float64)
  total = float(n * b)
  mean_sq = float(counts @ gram @ counts) / total**2
  per_minibatch = gram[minibatches[:, :, None], minibatches[:, None, :]].sum((1, 2)) / b**2
  spread = max(float(per_minibatch.sum()) - n * mean_sq, 0.0)
  several = n > 1  # one minibatch says nothing about the noise
  return {
      "loss": float(counts @ losses) / total,
      "grad_norm_sq": mean_sq,
      "grad_norm_sq_corrected": mean_sq - spread / (n * (n - 1)) if several else np.nan,
      "noise_sq": spread / n if several else np.nan,
      "noise_sq_corrected": spread / (n - 1) if several else np.nan,
  }


def minibatch_noise(per_example_variance: float, num_examples: int, batch_size: int,
                    replace: bool = False) -> float:
  """E||g_B - grad f||^2 for a minibatch of `batch_size` drawn uniformly from
  `num_examples`, where per_example_variance = (1/N) sum_i ||grad l_i - grad f||^2.

  Without replacement (how `batching.diagnostic_indices` draws each minibatch) it is
  (N - B) / (B (N - 1)) times the variance, the finite-population correction; with
  replacement 1 / B times it.
  """
  n, b = num_examples, batch_size
  if replace:
    return per_example_variance / b
  return per_example_variance * (n - b) / (b * (n - 1))


# --------------------------------------------------------------------------------------
# The study


@dataclasses.dataclass(frozen=True)
class QuantityConvergence:
  """One quantity's estimates against the number n of minibatches.

  Arrays are indexed [sample size] or [sample size, repeat]. `corrected` is None where
  the plain estimate is already unbiased (`loss`) or has no correction (`sharpness`).
  NaN marks estimates not made (the noise and the corrected ||grad f||^2 at n = 1;
  sharpness in repeats beyond `sharpness_repeats`).
  """
  name: str
  reference: float
  sample_sizes: np.ndarray
  plain: np.ndarray
  corrected: np.ndarray | None
  plain_mean: np.ndarray
  plain_low: np.ndarray              # lower quantile over repeats
  plain_high: np.ndarray             # upper quantile over repeats
  plain_within: np.ndarray           # fraction of repeats within tolerance
  plain_sufficient_n: int | None
  corrected_mean: np.ndarray | None
  corrected_low: np.ndarray | None
  corrected_high: np.ndarray | None
  corrected_within: np.ndarray | None
  corrected_sufficient_n: int | None


@dataclasses.dataclass(frozen=True)
class EstimatorStudy:
  """What `estimator_convergence` measured; `quantities` maps each of QUANTITIES to its
  `QuantityConvergence`."""
  quantities: dict[str, QuantityConvergence]
  sample_sizes: np.ndarray
  num_repeats: int
  sharpness_repeats: int
  batch_size: int
  tolerance: float
  coverage: float
  quantiles: tuple[float, float]
  reference_kind: str          # 'exact' or 'pool'
  reference_note: str          # how the reference values were obtained
  num_examples: int            # training examples (exact) or pool minibatches (pool)
  step: int                    # the state's optimizer step
  seed: int
  sharpness_reference_residual: float
  seconds: float

  def as_dict(self) -> dict:
    """Plain Python values (lists, floats, None for NaN), e.g. for JSON."""
    return to_plain(self)


def to_plain(value: Any) -> Any:
  """`value` with arrays, dataclasses and tuples as lists, dicts and Python numbers, and
  NaN as None, so that `json.dumps` writes standard JSON."""
  if isinstance(value, np.ndarray):
    return to_plain(value.tolist())
  if isinstance(value, np.generic):
    return to_plain(value.item())
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, (list, tuple)):
    return [to_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: to_plain(v) for k, v in value.items()}
  if dataclasses.is_dataclass(value):
    return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
  return value


def _within(estimates: np.ndarray, reference: float, tolerance: float) -> np.ndarray:
  """Fraction of the repeats (non-NaN ones) within `tolerance` of `reference`, per n."""
  made = ~np.isnan(estimates)
  close = made & (np.abs(np.where(made, estimates, 0.0) - reference)
                  <= tolerance * abs(reference))
  return close.sum(1) / np.maximum(made.sum(1), 1)


def _sufficient_n(sizes: np.ndarray, within: np.ndarray, coverage: float) -> int | None:
  """The smallest n from which on (at it and every larger n studied) `within` >= coverage."""
  best = None
  for n, fraction in zip(sizes[::-1], within[::-1]):
    if fraction < coverage:
      break
    best = int(n)
  return best


def _convergence(name: str, reference: float, sizes: np.ndarray, plain: np.ndarray,
                 corrected: np.ndarray | None, tolerance: float, coverage: float,
                 quantiles: tuple[float, float]) -> QuantityConvergence:
  def summary(estimates):
    if estimates is None:
      return None, None, None, None, None
    with warnings.catch_warnings():  # all-NaN rows: the corrected estimates at n = 1
      warnings.simplefilter("ignore", RuntimeWarning)
      mean = np.nanmean(estimates, 1)
      low, high = np.nanquantile(estimates, quantiles, axis=1)
    within = _within(estimates, reference, tolerance)
    within = np.where(np.isnan(estimates).all(1), np.nan, within)
    return mean, low, high, within, _sufficient_n(sizes, np.nan_to_num(within), coverage)

  return QuantityConvergence(name, reference, sizes, plain, corrected, *summary(plain),
                             *summary(corrected))


def _check(sample_sizes: Sequence[int], num_repeats: int, seed: int, tolerance: float,
           sharpness_iters: int, coverage: float, quantiles: Sequence[float]) -> np.ndarray:
  sizes = np.asarray(sorted(set(int(n) for n in sample_sizes)), np.int64)
  if not len(sizes):
    raise ConfigError("sample_sizes is empty; pass minibatch counts such as (1, 2, 4, 8)")
  if sizes[0] < 1:
    raise ConfigError(f"sample size n={sizes[0]} must be >= 1 (minibatches per estimate)")
  if num_repeats < 1:
    raise ConfigError(f"num_repeats={num_repeats} must be >= 1")
  if seed < 0:
    raise ConfigError(f"seed={seed} must be >= 0 (numpy seeds the draws with it)")
  if not tolerance > 0:
    raise ConfigError(f"tolerance={tolerance} must be > 0 (a relative error, e.g. 0.1)")
  if sharpness_iters < 1:
    raise ConfigError(f"sharpness_iters={sharpness_iters} must be >= 1")
  if not 0 < coverage <= 1:
    raise ConfigError(f"coverage={coverage} must be in (0, 1]")
  if not 0 <= quantiles[0] <= quantiles[1] <= 1:
    raise ConfigError(f"quantiles={tuple(quantiles)} must be (low, high) in [0, 1]")
  return sizes


def training_batch_size(task: Any, batch_size: int | None) -> int:
  """`batch_size`, or the task's training batch size when None (ConfigError if neither)."""
  batch = batch_size or getattr(task, "batch_size", None)
  if not batch or batch < 1:
    raise ConfigError(f"batch_size={batch_size!r}: pass the examples per minibatch (>= 1); "
                      "this task has no training batch size to default to")
  return int(batch)


def _separable(fns: UnitFunctions, state: RunState, examples: dict) -> bool:
  """Whether the diagnostic loss of a minibatch is the mean of its examples' losses.

  Not so with BatchNorm on batch statistics or dropout masks laid over the batch; then
  a minibatch gradient is not the mean of per-example gradients.
  """
  size = min(8, len(next(iter(examples.values()))))
  batch = {k: v[:size] for k, v in examples.items()}
  whole = float(fns.unit_loss(state, state.params, batch))
  parts = np.asarray(fns.unit_losses(state, {k: v[:, None] for k, v in batch.items()}))
  return bool(np.isclose(whole, float(parts.mean()), rtol=1e-5, atol=1e-7))


def estimator_convergence(plan: Any, state: RunState, sample_sizes: Sequence[int],
                          num_repeats: int, seed: int, tolerance: float = 0.1,
                          sharpness_iters: int = 20, *, batch_size: int | None = None,
                          coverage: float = 0.9,
                          quantiles: tuple[float, float] = (0.1, 0.9),
                          sharpness_repeats: int | None = None, sharpness_tol: float = 1e-2,
                          reference_iters: int = 100, pool_size: int | None = None,
                          max_exact_examples: int = 10_000,
                          max_gradient_bytes: int = 2**31,
                          chunk_examples: int = 256) -> EstimatorStudy:
  """Estimates from n random minibatches against the true values, at fixed weights.

  For each n in `sample_sizes` and each of `num_repeats` repeats, n fresh training-size
  minibatches are drawn and the four quantities estimated from them: the loss (mean
  minibatch loss), ||grad f||^2 (plain ||g_bar||^2 and bias-corrected), the noise
  E||g_B - grad f||^2 (plain S / n and corrected S / (n - 1)) and the sharpness (top
  eigenvalue of the mean of the n minibatch Hessians, by Lanczos with at most
  `sharpness_iters` products, for the first `sharpness_repeats` repeats).

  Reference values. *Exact* mode, when the task's training set has at most
  `max_exact_examples` examples, is read into memory, and the diagnostic loss is a mean
  over examples: f and grad f over the whole training set, the noise from the
  per-example gradients by the formula of `minibatch_noise` for minibatches drawn
  without replacement (as `batching.diagnostic_indices`, which draws them here), and
  the full-data sharpness by Lanczos (up to `reference_iters` products, tolerance
  `sharpness_tol / 10`). Otherwise *pool* mode: a pool of `pool_size` minibatches
  (default 4 x the largest n) is drawn once with the task's sampler and every draw is n
  distinct minibatches of it; the references are the pool's own unbiased estimates
  (mean loss, ||g_bar||^2 - S / (M (M - 1)), S / (M - 1), sharpness of the pool's mean
  Hessian), and the draws are not independent of the reference: say so when reporting.

  Sufficiency rule: an estimate "suffices" at n when at least `coverage` of its repeats
  are within `tolerance` (relative) of the reference; `*_sufficient_n` is the smallest n
  studied at which this holds for that n and every larger n studied (None if never).
  Squared norms are compared as squares.

  Args:
    plan, state: a run's plan and restored state (`restore.load_run_state`).
    sample_sizes: the n to study (minibatches per estimate, each >= 1).
    num_repeats: fresh draws per n.
    seed: the draws' seed.
    tolerance: relative tolerance of the sufficiency rule (> 0).
    sharpness_iters: Lanczos products per sharpness estimate.
    batch_size: examples per minibatch (default: the training batch size).
    coverage, quantiles: the sufficiency rule's fraction; the spread's quantiles.
    sharpness_repeats: repeats that also estimate the sharpness (default: all); each
      costs up to `sharpness_iters` passes over min(n x batch, N) examples.
    sharpness_tol: Lanczos stops once the top Ritz pair's residual is below this
      relative to its value; the residual bounds the eigenvalue's error (which is
      typically far smaller, about residual^2 / spectral gap).
    reference_iters: Lanczos products for the reference sharpness.
    pool_size: minibatches in the pool (pool mode only).
    max_exact_examples: the largest training set read whole for exact references.
    max_gradient_bytes: the most memory the units' float32 gradients may take (exact
      mode falls back to pool mode beyond it; pool mode raises a ConfigError).
    chunk_examples: examples per vmapped call (memory: this many gradients at once).
  """
  started = time.perf_counter()
  sizes = _check(sample_sizes, num_repeats, seed, tolerance, sharpness_iters, coverage, quantiles)
  task = plan.task
  batch = training_batch_size(task, batch_size)
  sharpness_repeats = num_repeats if sharpness_repeats is None else max(
      0, min(int(sharpness_repeats), num_repeats))
  state = restore.on_one_device(state)
  fns = unit_functions(task)

  dim = sum(leaf.size for leaf in jax.tree.leaves(state.params))

  def fits(num_units: int) -> bool:
    return 4 * num_units * dim <= max_gradient_bytes

  examples = restore.training_set(task, max_exact_examples)
  if examples is not None and not fits(len(next(iter(examples.values())))):
    examples = None
  exact = examples is not None and _separable(fns, state, examples)
  if exact:
    units = {k: v[:, None] for k, v in examples.items()}  # single examples
    num_units, unit_size = len(next(iter(examples.values()))), 1
    if batch > num_units:
      raise ConfigError(f"batch_size={batch} exceeds the {num_units} training examples")
    note = (f"exact: f, grad f and the per-example gradient variance over all {num_units} "
            f"training examples; noise = (N - B) / (B (N - 1)) x variance for minibatches "
            "drawn without replacement; sharpness = top eigenvalue of the full-data Hessian")
  else:
    num_units = int(pool_size or max(4 * int(sizes[-1]), 16))
    if sizes[-1] > num_units:
      raise ConfigError(f"sample size n={sizes[-1]} exceeds pool_size={num_units}; "
                        "raise pool_size or lower the sample sizes")
    if not fits(num_units):
      raise ConfigError(f"the gradients of pool_size={num_units} minibatches of {dim} "
                        f"parameters need {4 * num_units * dim / 2**30:.1f} GiB, above "
                        f"max_gradient_bytes={max_gradient_bytes}; lower pool_size and the "
                        "sample sizes, or raise max_gradient_bytes")
    pool = task.diagnostic_batches(POOL_ROUND + seed, num_units, batch)
    units = {k: np.stack([m[k] for m in pool]) for k in pool[0]}  # whole minibatches
    unit_size = batch
    why = ("the diagnostic loss is not a mean over examples (BatchNorm or dropout)"
           if examples is not None else "the training set or its per-example gradients "
           "do not fit in memory")
    note = (f"pool: {why}; references are the unbiased estimates from a pool of "
            f"{num_units} minibatches, and each draw takes n distinct minibatches of it")

  chunk = max(1, chunk_examples // unit_size)
  losses, grads = unit_losses_and_gradients(fns, state, units, chunk)
  gram = gram_matrix(grads)
  del grads

  all_units = np.arange(num_units)
  whole = minibatch_estimates(gram, losses, all_units[None, :])
  if exact:
    variance = float(np.trace(gram)) / num_units - whole["grad_norm_sq"]
    references = {"loss": whole["loss"], "grad_norm_sq": whole["grad_norm_sq"],
                  "noise_sq": minibatch_noise(variance, num_units, batch)}
  else:
    pooled = minibatch_estimates(gram, losses, all_units[:, None])
    references = {"loss": pooled["loss"], "grad_norm_sq": pooled["grad_norm_sq_corrected"],
                  "noise_sq": pooled["noise_sq_corrected"]}
  rng = np.random.default_rng([seed, 2])
  full_hvp = weighted_hvp_fn(fns, state, units, all_units,
                             np.full(num_units, 1.0 / num_units), chunk)
  top = top_eigenvalue(full_hvp, dim, num_iters=reference_iters, rng=rng,
                       tol=sharpness_tol / 10)
  references["sharpness"] = top.value

  shape = (len(sizes), num_repeats)
  estimates = {name: np.full(shape, np.nan) for name in
               ("loss", "grad_norm_sq", "grad_norm_sq_corrected", "noise_sq",
                "noise_sq_corrected", "sharpness")}
  for i, n in enumerate(sizes):
    for r in range(num_repeats):
      draw = i * num_repeats + r
      if exact:
        minibatches = batching.diagnostic_indices(seed, draw, int(n), batch, num_units)
      else:
        minibatches = np.random.default_rng([seed, draw, 3]).choice(
            num_units, int(n), replace=False)[:, None]
      for name, value in minibatch_estimates(gram, losses, minibatches).items():
        estimates[name][i, r] = value
      if r < sharpness_repeats:
        counts = np.bincount(minibatches.ravel(), minlength=num_units)
        support = np.flatnonzero(counts)
        matvec = weighted_hvp_fn(fns, state, units, support,
                                 counts[support] / minibatches.size, chunk)
        estimates["sharpness"][i, r] = top_eigenvalue(
            matvec, dim, num_iters=sharpness_iters, tol=sharpness_tol,
            rng=np.random.default_rng([seed, draw, 4])).value

  quantities = {
      "loss": _convergence("loss", references["loss"], sizes, estimates["loss"], None,
                           tolerance, coverage, quantiles),
      "grad_norm_sq": _convergence("grad_norm_sq", references["grad_norm_sq"], sizes,
                                   estimates["grad_norm_sq"],
                                   estimates["grad_norm_sq_corrected"], tolerance,
                                   coverage, quantiles),
      "noise_sq": _convergence("noise_sq", references["noise_sq"], sizes,
                               estimates["noise_sq"], estimates["noise_sq_corrected"],
                               tolerance, coverage, quantiles),
      "sharpness": _convergence("sharpness", references["sharpness"], sizes,
                                estimates["sharpness"], None, tolerance, coverage,
                                quantiles),
  }
  return EstimatorStudy(
      quantities=quantities, sample_sizes=sizes, num_repeats=int(num_repeats),
      sharpness_repeats=sharpness_repeats, batch_size=batch, tolerance=float(tolerance),
      coverage=float(coverage), quantiles=tuple(float(q) for q in quantiles),
      reference_kind="exact" if exact else "pool", reference_note=note,
      num_examples=num_units, step=int(np.asarray(jax.device_get(state.step))),
      seed=int(seed), sharpness_reference_residual=top.residual,
      seconds=time.perf_counter() - started)
