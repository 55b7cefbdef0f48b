"""What every task's train step and diagnostic round share.

A task (`invmeasure.training.tasks`) computes its minibatch loss and gradient; the pieces
here turn them into the next `RunState` (optimizer update, loss sums) and measure the
paper's quantities on K minibatches. Everything is a pure function of (state, batch) that
`loop.py` jits over a device mesh; randomness comes from `step_key(seed, step)`, so a
step's result depends on nothing but the state and the batch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from invmeasure import diagnostics as dg
from invmeasure.training import optim
from invmeasure.training.state import RunState

# (state, minibatch) -> (loss_fn, batch): the deterministic loss a round differentiates.
LossAndBatch = Callable[[RunState, dict], tuple[Callable, dict]]


class Optimization(NamedTuple):
  """How long a run is and how it steps, derived from the config and the epoch length."""
  steps_per_epoch: int
  num_steps: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation


def make_optimization(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Optimization:
  """Steps (`num_train_steps`, or `num_epochs` epochs), learning-rate schedule and optimizer.

  With `optimizer.clip_norm` > 0 the gradient's global norm is clipped to it before the
  optimizer sees it (weight decay is added after), as PyTorch's `clip_grad_norm_`.
  """
  num_steps = config.get("num_train_steps") or int(round(config.num_epochs * steps_per_epoch))
  schedule = optim.make_schedule(config, steps_per_epoch, num_steps)
  tx = optim.make_optimizer(config, schedule)
  clip_norm = config.optimizer.get("clip_norm", 0.0)
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return Optimization(steps_per_epoch, num_steps, schedule, tx)


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The key of a step's randomness (augmentation, dropout)."""
  return jax.random.fold_in(jax.random.key(seed), step)


# Quantities the train step can measure at every step (`config.diagnostics.per_step`).
# The first three need the step's gradient and update only; the others come from the
# per-example gradients of the step's minibatch (`PER_EXAMPLE`) or, for `layer_norms`,
# are a norm per parameter leaf.
PER_STEP = ("grad_norm", "update_norm", "update_sharpness", "norm_test", "inner_test",
            "ortho_test", "gsnr", "noise_scale", "cabs", "early_stopping", "tic", "alpha",
            "layer_norms")
PER_EXAMPLE = ("norm_test", "inner_test", "ortho_test", "gsnr", "noise_scale", "cabs",
               "early_stopping", "tic", "alpha")
# Defined for plain SGD only (no momentum, no weight decay), as in their papers and Cockpit.
SGD_ONLY = ("cabs", "early_stopping")


def per_step_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The names in `config.diagnostics.per_step` (comma-separated; '' for none)."""
  value = config.diagnostics.get("per_step", "") or ""
  return tuple(name.strip() for name in value.split(",") if name.strip())


class PerExample(NamedTuple):
  """What a task hands the train step for the per-example instruments."""
  loss_fn: Callable            # (params, batch) -> mean loss; examples independent
  batch: Any                   # the step's minibatch as `loss_fn` takes it
  mean_gradient: Any           # the mean of the per-example gradients if known, else None
  learning_rate: jax.Array     # the step's (CABS)
  key: jax.Array               # Hutchinson's probes (TIC)
  chunk_size: int | None = None  # examples differentiated at once (None: all)
  tic_probes: int = 1          # Rademacher probes of tr(H) per step


def needs_per_example(names: tuple[str, ...]) -> bool:
  return any(name in PER_EXAMPLE for name in names)


def step_diagnostics(names: tuple[str, ...], grads, updates, params,
                     step_loss: Callable | None) -> dict[str, jax.Array]:
  """The per-step quantities `names` of one step, keyed `step_<name>`: the minibatch
  gradient's norm, the update's norm, and the curvature u^T H u / ||u||^2 of the step's
  own minibatch loss `step_loss(params)` along the update u (forward over forward, no
  backward pass)."""
  out = {}
  if "grad_norm" in names:
    out["step_grad_norm"] = dg.tree_norm(grads)
  if "update_norm" in names:
    out["step_update_norm"] = dg.tree_norm(updates)
  if "update_sharpness" in names:
    out["step_update_sharpness"] = dg.directional_sharpness(lambda p, _: step_loss(p),
                                                            params, None, updates)
  return out


def per_example_diagnostics(names: tuple[str, ...], state: RunState, grads, updates,
                            per_example: PerExample | None) -> tuple[dict, dict | None]:
  """The per-example instruments `names` of one step and the next alpha carry.

  One pass over the minibatch's per-example gradients (in chunks) gives every reduction;
  alpha projects them on the last step's update (this step ends it) and on this one's
  (this step starts it): it is reported one step late, as Cockpit reports it, and the
  step's row skips it before there is a previous step. `layer_norms` are per-leaf norms
  of the gradient, the update, the weights and their distance from initialisation, at
  the weights the gradient was taken at.
  """
  out: dict[str, jax.Array] = {}
  carry = None
  if "layer_norms" in names:
    distance = jax.tree.map(jnp.subtract, state.params, state.init_params)
    norms = dg.layer_norms(grad=grads, update=updates, params=state.params, distance=distance)
    out.update({f"step_layer_norms/{k}": v for k, v in norms.items()})
  if not needs_per_example(names):
    return out, carry
  if per_example is None:
    raise ValueError(f"per-step {[n for n in names if n in PER_EXAMPLE]} need the task's "
                     "per-example loss")
  directions = []
  if "alpha" in names:
    previous = state.sums["alpha"]
    directions = [previous["direction"], updates]
  stats = dg.per_example_stats(
      per_example.loss_fn, state.params, per_example.batch,
      mean_gradient=per_example.mean_gradient, directions=directions,
      sum_squares="gsnr" in names or "early_stopping" in names,
      chunk_size=per_example.chunk_size)
  for name, fn in (("norm_test", dg.norm_test), ("inner_test", dg.inner_test),
                   ("ortho_test", dg.ortho_test), ("gsnr", dg.mean_gsnr),
                   ("early_stopping", dg.early_stopping)):
    if name in names:
      out[f"step_{name}"] = fn(stats)
  if "noise_scale" in names:
    scale = dg.noise_scale(stats)
    out["step_noise_scale"], out["step_noise_scale_unbiased"] = scale.simple, scale.unbiased
  if "cabs" in names:
    out["step_cabs"] = dg.cabs_batch_size(stats, per_example.learning_rate)
  if "tic" in names:
    trace = dg.hessian_trace(per_example.loss_fn, state.params, per_example.batch,
                             key=per_example.key, num_samples=per_example.tic_probes,
                             unroll=True).estimate
    out["step_tic"], out["step_hessian_trace"] = dg.tic(stats, trace), trace
  if "alpha" in names:
    previous = state.sums["alpha"]
    t_previous = dg.tree_norm(previous["direction"])
    end = dg.step_length_point(stats, 0, t_previous)
    alpha = dg.normalized_step_length(dg.StepLengthPoint(**previous["start"]), end,
                                      t_previous)
    out["step_alpha"] = jnp.where(previous["valid"] > 0, alpha, jnp.nan)
    start = dg.step_length_point(stats, 1, dg.tree_norm(updates))
    carry = {"direction": updates, "start": dict(start._asdict()),
             "valid": jnp.ones((), jnp.float32)}
  return out, carry


def apply_gradients(tx: optax.GradientTransformation, state: RunState, loss: jax.Array,
                    grads, *, per_step: tuple[str, ...] = (), step_loss: Callable | None = None,
                    per_example: PerExample | None = None,
                    **changes) -> tuple[RunState, dict]:
  """The state after one optimizer step on `grads`, with `loss` added to the sums and
  the other fields in `changes` (e.g. a new model state) replaced, and the step's metrics:
  `loss` and the `per_step` quantities (`step_diagnostics`; `step_loss` is the step's
  minibatch loss as a function of the weights; `per_example_diagnostics` from
  `per_example`), whose sums feed the training rows."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **step_diagnostics(per_step, grads, updates, state.params,
                                              step_loss)}
  extra, carry = per_example_diagnostics(per_step, state, grads, updates, per_example)
  metrics.update(extra)
  sums = dict(state.sums)
  for name in ("log", "epoch"):
    sums[f"{name}_loss"] = sums[f"{name}_loss"] + loss
    sums[f"{name}_count"] = sums[f"{name}_count"] + 1
  for field in metrics:
    if field.startswith("step_") and field != "step_alpha":
      sums[f"log_{field}"] = sums[f"log_{field}"] + metrics[field]
  if carry is not None:
    # The rows average alpha over the steps that have it: its sum is kept rescaled to
    # the interval's step count, which the loop divides by.
    valid = state.sums["alpha"]["valid"]
    sums["log_alpha_sum"] = sums["log_alpha_sum"] + jnp.where(valid > 0, metrics["step_alpha"],
                                                              0.0)
    sums["log_alpha_count"] = sums["log_alpha_count"] + valid
    sums["log_step_alpha"] = (sums["log_alpha_sum"] / sums["log_alpha_count"]
                              * sums["log_count"])
    sums["alpha"] = carry
  sums["update_norm"] = dg.tree_norm(updates)
  new_state = state._replace(step=state.step + 1, params=params, opt_state=opt_state,
                             sums=sums, **changes)
  return new_state, metrics


class PowerChunk(NamedTuple):
  """Where a few power iterations of `DiagnosticFns.power_step` left the estimate."""
  eigenvalue: jax.Array   # Rayleigh quotient of the last iteration that counted
  vector: object          # its normalised H v: the next start
  residual: jax.Array     # ||H v - eigenvalue v|| of that iteration
  num_iters: jax.Array    # iterations that changed the estimate (all of them when tol = 0)
  converged: jax.Array    # the relative change of the eigenvalue fell to tol or below


class DiagnosticFns(NamedTuple):
  """The pieces of a diagnostic round; the loop jits each and drives them from Python.

  Pieces, not one program with loops inside: XLA:CPU runs backward convolutions inside
  loops slowly, and unrolling a whole round makes compile time grow with K and the number
  of power iterations. Each piece takes a short chunk (a few minibatches, a few power
  iterations) unrolled, so one program computes several independent gradients at once
  and the HVPs of a chunk share their gradient; each chunk size compiles once.
  """
  init: Callable        # (state) -> gradient statistics accumulator
  accumulate: Callable  # (state, acc, minibatches) -> acc, a sequence more minibatch gradients
  # (state, vector, previous_eigenvalue, minibatch, *, num_iters, tol) -> PowerChunk
  power_step: Callable
  summarize: Callable   # (state, acc, minibatch, eigenvalue, residual) -> metric row


def make_diagnostic_fns(loss_and_batch: LossAndBatch, tx: optax.GradientTransformation,
                        weight_decay: float) -> DiagnosticFns:
  """Measures the paper's quantities at the current weights on K fresh minibatches.

  `loss_and_batch` gives the task's deterministic minibatch loss at the state and the
  minibatch as that loss takes it. Gradient statistics are over all K minibatches;
  sharpness is measured on the first, warm-started from the previous round's
  eigenvector; the update is what `tx` would do with the first minibatch's gradient;
  `weight_decay` is the lambda of F = f + lambda/2 ||x||^2.
  """

  def init(state: RunState):
    return dg.gradient_stats_init(state.params)

  def accumulate(state: RunState, acc, minibatches):
    # The gradients are independent: unrolled, XLA runs them side by side; only the
    # cheap Welford folds are ordered, as one minibatch per call would order them.
    for minibatch in minibatches:
      loss_fn, batch = loss_and_batch(state, minibatch)
      acc = dg.gradient_stats_update(loss_fn, acc, state.params, batch)
    return acc

  def power_step(state: RunState, vector, previous: jax.Array, minibatch: dict, *,
                 num_iters: int = 1, tol: float = 0.0) -> PowerChunk:
    """`num_iters` power iterations from `vector`, unrolled (their HVPs share one gradient).

    With `tol` > 0 the estimate freezes after the first iteration whose eigenvalue is
    within `tol` (relative) of the one before it (`previous` for the first; NaN: none),
    as if the iteration had stopped there; with 0 every iteration counts.
    """
    loss_fn, batch = loss_and_batch(state, minibatch)
    done = jnp.zeros((), jnp.int32)
    converged = jnp.zeros((), bool)
    eigenvalue = residual = None
    for _ in range(num_iters):
      top = dg.sharpness(loss_fn, state.params, batch, init=vector, num_iters=1)
      if tol <= 0:
        eigenvalue, vector, residual, done = (top.eigenvalue, top.eigenvector, top.residual,
                                              done + 1)
        continue
      if eigenvalue is None:  # the first iteration always counts
        eigenvalue, residual = top.eigenvalue, top.residual
      keep = converged
      eigenvalue, residual = (jnp.where(keep, eigenvalue, top.eigenvalue),
                              jnp.where(keep, residual, top.residual))
      vector = jax.tree.map(lambda old, new: jnp.where(keep, old, new), vector,
                            top.eigenvector)
      # NaN `previous` compares false: the round's first iteration cannot converge.
      now = jnp.abs(top.eigenvalue - previous) <= tol * jnp.abs(top.eigenvalue)
      converged, done = keep | now, done + (~keep).astype(jnp.int32)
      previous = eigenvalue
    return PowerChunk(eigenvalue, vector, residual, done, converged)

  def summarize(state: RunState, acc, minibatch: dict, other_minibatch: dict, eigenvalue,
                residual) -> dict:
    loss_fn, first = loss_and_batch(state, minibatch)
    _, second = loss_and_batch(state, other_minibatch)
    params = state.params
    stats = dg.gradient_stats_finalize(acc)
    minibatch_grad = jax.grad(loss_fn)(params, first)
    update, _ = tx.update(minibatch_grad, state.opt_state, params)
    objective_grad = jax.tree.map(lambda g, p: g + weight_decay * p, stats.mean_gradient,
                                  params)
    # grad F from the other K - 1 minibatches, so that it is independent of `update`.
    k = stats.num_minibatches.astype(jnp.float32)
    others_grad = jax.tree.map(lambda m, g, p: (k * m - g) / (k - 1) + weight_decay * p,
                               stats.mean_gradient, minibatch_grad, params)
    return {
        "full_loss": stats.loss,
        "grad_norm": stats.grad_norm,
        "objective_grad_norm": dg.tree_norm(objective_grad),
        "noise_norm": stats.noise_norm,
        "grad_norm_sq_unbiased": stats.grad_norm_sq_unbiased,
        "noise_norm_sq_unbiased": stats.noise_norm_sq_unbiased,
        "sharpness": eigenvalue,
        "sharpness_residual": residual,
        "update_sharpness": dg.directional_sharpness(loss_fn, params, first, update),
        # The same from another minibatch's Hessian: independent of the update, so its
        # mean is the full Hessian's (on `first` it is biased up along g_first).
        "update_sharpness_independent": dg.directional_sharpness(loss_fn, params, second,
                                                                 update),
        # Equation (10) in the update's terms: at an invariant measure the expected
        # -<grad F, u> balances (1/2)(update_sharpness + lambda) ||u||^2.
        "update_descent": -dg.tree_vdot(others_grad, update),
        "diagnostic_update_norm": dg.tree_norm(update),
        "gradient_sharpness": dg.directional_sharpness(loss_fn, params, first,
                                                       stats.mean_gradient),
        "minibatch_grad_norm": dg.tree_norm(minibatch_grad),
        "weight_norm": dg.tree_norm(params),
        "distance_from_init": dg.tree_norm(jax.tree.map(jnp.subtract, params, state.init_params)),
        "update_norm": state.sums["update_norm"],
    }

  return DiagnosticFns(init, accumulate, power_step, summarize)
