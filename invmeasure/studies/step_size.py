"""Would a smaller step have lowered the loss? Theorem 5.2 and the one-step gain of
Theorem 4.3, measured at restored weights.

At weights x with optimizer state s (momentum, Adam moments), one step on minibatch B
moves x to x + u_B. For SGD with momentum and for Adam as `invmeasure.training.optim`
builds them, the learning rate is the last factor of the update (`scale_by_learning_rate`
ends the chain), so given (x, s) the update of step size c * eta is exactly c * u_B.
`step_size_study` measures the full-data changes

    F(x + c u_B) - F(x),   F = f + (lambda / 2) ||x||^2,  f over the whole training set,

for several scales c, averaged over random minibatches B and over states x sampled from
a run's plateau (checkpoints: samples of the empirical measure of the iterates). At an
invariant measure the expected change at c = 1 is about zero (what the step gains in
expectation, it loses again), while Theorem 5.2 says that, unless the measure sits on
stationary points, some c < 1 gives a negative expected change: a lower loss.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from invmeasure.data import batching
from invmeasure.studies import estimators, restore
from invmeasure.studies._task_cache import per_task
from invmeasure.errors import ConfigError
from invmeasure.training.state import RunState

DEFAULT_SCALES = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


class StepFunctions:
  """Jitted pieces of the study for one task: an optimizer update, and sums over chunks
  of the training set of the diagnostic loss (and its derivatives) around x."""

  def __init__(self, task: Any):
    self.task = task
    tx = task.optimization.tx

    def chunk_loss(state: RunState, params, chunk: dict) -> jax.Array:
      loss_fn, batch = task.diagnostic_loss(state, chunk)
      return loss_fn(params, batch)

    def update(state: RunState, minibatch: dict) -> jax.Array:
      grad = jax.grad(chunk_loss, argnums=1)(state, state.params, minibatch)
      updates, _ = tx.update(grad, state.opt_state, state.params)
      return ravel_pytree(updates)[0]

    def changes(state: RunState, direction: jax.Array, scales: tuple[float, ...],
                chunks: dict, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
      step = ravel_pytree(state.params)[1](direction)

      def one(chunk):
        base = chunk_loss(state, state.params, chunk)
        # One forward per scale (unrolled: weights batched over scales make XLA:CPU
        # convolutions slow); c = 0 is x itself, whose change is 0 without evaluating.
        moved = [chunk_loss(state, jax.tree.map(lambda p, d: p + (c * d).astype(p.dtype),
                                                state.params, step), chunk) - base
                 if c else jnp.zeros_like(base) for c in scales]
        # Differences per chunk, before any float32 sum, keep the cancellation small.
        return base, jnp.stack(moved)

      base, diffs = jax.vmap(one)(chunks)
      return weights @ base, weights @ diffs

    def gradient(state: RunState, chunks: dict, weights: jax.Array) -> jax.Array:
      def weighted(params):
        return weights @ jax.vmap(lambda chunk: chunk_loss(state, params, chunk))(chunks)
      return ravel_pytree(jax.grad(weighted)(state.params))[0]

    def curvature(state: RunState, direction: jax.Array, chunks: dict,
                  weights: jax.Array) -> jax.Array:
      d = ravel_pytree(state.params)[1](direction)

      def weighted(params):
        return weights @ jax.vmap(lambda chunk: chunk_loss(state, params, chunk))(chunks)

      along = lambda p: jax.jvp(weighted, (p,), (d,))[1]
      return jax.jvp(along, (state.params,), (d,))[1]  # d^T H d, forward over forward

    self.update = jax.jit(update)
    self.changes = jax.jit(changes, static_argnums=2)
    self.gradient = jax.jit(gradient)
    self.curvature = jax.jit(curvature)


# The (cached) `StepFunctions` of a task, so repeated studies compile once.
step_functions = per_task(StepFunctions)


class TrainingChunks(NamedTuple):
  """The whole training set as consecutive chunks of `batch_size` examples, stacked in
  groups of `group` chunks (the last padded with zero weights), plus the remainder.

  f is the size-weighted mean of the diagnostic loss over the chunks: exactly the mean
  over examples when the loss is one; with BatchNorm on batch statistics, the mean
  over training-size minibatches of the function SGD follows.
  """
  groups: list[tuple[dict, np.ndarray]]  # (chunks [group, batch, ...], weights [group])
  examples: dict                          # all training examples (numpy)
  num_examples: int


def training_chunks(task: Any, batch_size: int, group: int = 16,
                    max_examples: int | None = 50_000) -> TrainingChunks:
  """`TrainingChunks` of `task`'s training set (ConfigError when it cannot be read whole)."""
  examples = restore.training_set(task, max_examples)
  if examples is None:
    raise ConfigError(
        "the step-size study evaluates f on the whole training set in memory, and this "
        f"task has no random-access training source or more than max_examples="
        f"{max_examples} examples; raise max_examples or use an image data set")
  count = len(next(iter(examples.values())))
  if batch_size > count:
    raise ConfigError(f"batch_size={batch_size} exceeds the {count} training examples")
  full = count // batch_size
  stacked = {k: v[:full * batch_size].reshape(full, batch_size, *v.shape[1:])
             for k, v in examples.items()}
  groups = []
  for start in range(0, full, group):
    rows = np.arange(start, min(start + group, full))
    weights = np.zeros(group, np.float32)
    weights[:len(rows)] = batch_size / count
    padded = np.concatenate([rows, np.full(group - len(rows), rows[0])])
    groups.append(({k: v[padded] for k, v in stacked.items()}, weights))
  if count > full * batch_size:  # the remainder, its own (smaller) chunk
    rest = {k: v[None, full * batch_size:] for k, v in examples.items()}
    groups.append((rest, np.full(1, (count - full * batch_size) / count, np.float32)))
  groups = [(jax.device_put(chunks), jax.device_put(w)) for chunks, w in groups]
  return TrainingChunks(groups, examples, count)


@dataclasses.dataclass(frozen=True)
class StepSizeStudy:
  """What `step_size_study` measured. Arrays are indexed [state, minibatch, scale],
  [state, scale] or [scale].

  The standard errors treat the states as the independent units (the minibatches of one
  state share its weights): the standard deviation of the per-state means over
  sqrt(number of states). With a single state they fall back to the minibatches
  (`stderr_unit` says which). States from nearby checkpoints of one run are correlated,
  so space them apart.
  """
  scales: np.ndarray
  steps: np.ndarray                      # [S] each state's optimizer step
  learning_rates: np.ndarray             # [S] eta of each state's next update
  loss: np.ndarray                       # [S] f(x)
  objective: np.ndarray                  # [S] F(x)
  objective_change: np.ndarray           # [S, K, C] F(x + c u_B) - F(x)
  loss_change: np.ndarray                # [S, K, C] f(x + c u_B) - f(x)
  descent: np.ndarray                    # [S, K] -<grad F(x), u_B>, the first-order gain
  update_norm: np.ndarray                # [S, K] ||u_B||
  per_state_objective_change: np.ndarray  # [S, C] mean over minibatches
  per_state_loss_change: np.ndarray      # [S, C]
  mean_objective_change: np.ndarray      # [C] mean over states and minibatches
  stderr_objective_change: np.ndarray    # [C]
  mean_loss_change: np.ndarray           # [C]
  stderr_loss_change: np.ndarray         # [C]
  stderr_unit: str                       # 'states' or 'minibatches'
  weight_decay: float
  batch_size: int
  num_examples: int
  num_minibatches: int
  seed: int
  seconds: float

  @property
  def best_scale(self) -> float:
    """The scale with the lowest mean change of F."""
    return float(self.scales[int(np.argmin(self.mean_objective_change))])

  def as_dict(self) -> dict:
    """Plain Python values (lists, floats, None for NaN), e.g. for JSON; with
    `best_scale`."""
    return {**estimators.to_plain(self), "best_scale": self.best_scale}


def _mean_and_stderr(per_state: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                       str]:
  """Mean over states and minibatches; its standard error over states (or minibatches)."""
  mean = raw.mean((0, 1))
  if len(per_state) > 1:
    return mean, per_state.std(0, ddof=1) / np.sqrt(len(per_state)), "states"
  samples = raw[0]
  if len(samples) > 1:
    return mean, samples.std(0, ddof=1) / np.sqrt(len(samples)), "minibatches"
  return mean, np.full_like(mean, np.nan), "minibatches"


def _full_gradient(fns: StepFunctions, state: RunState, data: TrainingChunks) -> np.ndarray:
  return sum(np.asarray(fns.gradient(state, chunks, w), np.float64)
             for chunks, w in data.groups)


def _flat_params(state: RunState) -> np.ndarray:
  return np.asarray(ravel_pytree(state.params)[0], np.float64)


def step_size_study(plan: Any, states: Sequence[RunState],
                    scales: Sequence[float] = DEFAULT_SCALES, num_minibatches: int = 16,
                    seed: int = 0, *, batch_size: int | None = None,
                    max_examples: int | None = 50_000) -> StepSizeStudy:
  """The full-data change of F and f after one optimizer step scaled by each c in `scales`.

  For each state x in `states` and each of `num_minibatches` random training-size
  minibatches B (drawn without replacement, as the diagnostic rounds draw them, seeded
  by `seed` and the state's position in `states`): the optimizer's update u_B from the
  gradient of the diagnostic loss on B (`tx.update(grad, state.opt_state, params)`, as
  `step.make_diagnostic_fns` does; with the state's momentum or Adam moments), then
  F(x + c u_B) - F(x) and f(x + c u_B) - f(x) for every c, f over the whole training set
  (`TrainingChunks`), F = f + (weight_decay / 2) ||x||^2 with the task's weight decay.
  Step size c * eta is exactly the update scaled by c (see the module docstring). The
  gradient is the diagnostic one (the round's augmentation choice and fixed dropout
  mask); with augmentation the whole training set is `restore.training_set`'s fixed
  augmented copies, the same at x and at every x + c u_B. With decoupled weight decay F keeps the
  same definition, though the optimizer then follows f and the decay separately.

  Raises ConfigError for no states, no scales, num_minibatches < 1, seed < 0, or a task whose
  training set cannot be read whole (more than `max_examples`).
  """
  started = time.perf_counter()
  states = list(states)
  if not states:
    raise ConfigError("states is empty; pass the states of some checkpoints "
                      "(invmeasure.studies.restore.load_run_states)")
  scale_array = np.asarray([float(c) for c in scales], np.float64)
  if not len(scale_array) or not np.all(np.isfinite(scale_array)):
    raise ConfigError(f"scales={tuple(scales)} must be a non-empty list of finite numbers")
  if num_minibatches < 1:
    raise ConfigError(f"num_minibatches={num_minibatches} must be >= 1")
  if seed < 0:
    raise ConfigError(f"seed={seed} must be >= 0 (numpy seeds the draws with it)")
  task = plan.task
  batch = estimators.training_batch_size(task, batch_size)
  decay = float(getattr(task, "weight_decay", 0.0))
  data = training_chunks(task, batch, max_examples=max_examples)
  fns = step_functions(task)
  scales_static = tuple(float(c) for c in scale_array)

  shape = (len(states), num_minibatches, len(scale_array))
  loss_change, objective_change = np.zeros(shape), np.zeros(shape)
  descent, update_norm = np.zeros(shape[:2]), np.zeros(shape[:2])
  steps, rates, losses, objectives = [], [], [], []
  for s, state in enumerate(states):
    state = restore.on_one_device(state)
    step = int(np.asarray(jax.device_get(state.step)))
    x = _flat_params(state)
    objective_grad = _full_gradient(fns, state, data) + decay * x
    indices = batching.diagnostic_indices(seed, s, num_minibatches, batch, data.num_examples)
    loss = None
    for k, rows in enumerate(indices):
      minibatch = {name: v[rows] for name, v in data.examples.items()}
      u = fns.update(state, minibatch)
      base, diffs = 0.0, np.zeros(len(scale_array))
      for chunks, w in data.groups:
        part_base, part_diffs = fns.changes(state, u, scales_static, chunks, w)
        base += float(part_base)
        diffs += np.asarray(part_diffs, np.float64)
      u = np.asarray(u, np.float64)
      loss = base
      # (lambda/2)(||x + c u||^2 - ||x||^2), exactly, in float64.
      decay_change = decay * (scale_array * (x @ u) + 0.5 * scale_array**2 * (u @ u))
      loss_change[s, k] = diffs
      objective_change[s, k] = diffs + decay_change
      descent[s, k] = -(objective_grad @ u)
      update_norm[s, k] = np.sqrt(u @ u)
    steps.append(step)
    rates.append(float(plan.schedule(step)))
    losses.append(loss)
    objectives.append(loss + 0.5 * decay * (x @ x))

  per_state_objective = objective_change.mean(1)
  per_state_loss = loss_change.mean(1)
  mean_objective, stderr_objective, unit = _mean_and_stderr(per_state_objective,
                                                            objective_change)
  mean_loss, stderr_loss, _ = _mean_and_stderr(per_state_loss, loss_change)
  return StepSizeStudy(
      scales=scale_array, steps=np.asarray(steps), learning_rates=np.asarray(rates),
      loss=np.asarray(losses), objective=np.asarray(objectives),
      objective_change=objective_change, loss_change=loss_change, descent=descent,
      update_norm=update_norm, per_state_objective_change=per_state_objective,
      per_state_loss_change=per_state_loss, mean_objective_change=mean_objective,
      stderr_objective_change=stderr_objective, mean_loss_change=mean_loss,
      stderr_loss_change=stderr_loss, stderr_unit=unit, weight_decay=decay,
      batch_size=batch, num_examples=data.num_examples, num_minibatches=int(num_minibatches),
      seed=int(seed), seconds=time.perf_counter() - started)


class GradientDescentPrediction(NamedTuple):
  """The second-order prediction for one plain gradient-descent step on F."""
  scales: np.ndarray            # [C]
  predicted_change: np.ndarray  # [C] -c eta |g|^2 + (c eta)^2 / 2 g^T (H + lambda) g, g = grad F
  learning_rate: float          # eta at the state's step
  objective_grad_norm_sq: float  # ||grad F||^2
  curvature: float              # grad F^T (H + lambda I) grad F / ||grad F||^2
  best_scale: float             # argmin over c > 0 of the quadratic (inf if curvature <= 0)


def gd_prediction(plan: Any, state: RunState, scales: Sequence[float] = DEFAULT_SCALES, *,
                  batch_size: int | None = None,
                  max_examples: int | None = 50_000) -> GradientDescentPrediction:
  """The Taylor prediction of F(x - c eta grad F) - F(x) for plain full-batch gradient
  descent at `state` (no momentum, no noise): the descent term -c eta ||grad F||^2 plus
  the curvature term (c eta)^2 / 2 grad F^T (H + lambda I) grad F, H the full-data
  Hessian of f. Its minimiser over c is 1 / (eta * curvature): a step larger than that
  overshoots, which is where the full-data loss stops decreasing."""
  task = plan.task
  batch = estimators.training_batch_size(task, batch_size)
  decay = float(getattr(task, "weight_decay", 0.0))
  data = training_chunks(task, batch, max_examples=max_examples)
  fns = step_functions(task)
  state = restore.on_one_device(state)
  step = int(np.asarray(jax.device_get(state.step)))
  eta = float(plan.schedule(step))
  grad = _full_gradient(fns, state, data) + decay * _flat_params(state)
  norm_sq = float(grad @ grad)
  direction = jnp.asarray(grad, jnp.float32)
  hessian_part = sum(float(fns.curvature(state, direction, chunks, w))
                     for chunks, w in data.groups)
  curvature = hessian_part / norm_sq + decay
  c = np.asarray([float(v) for v in scales], np.float64)
  predicted = -c * eta * norm_sq + 0.5 * (c * eta) ** 2 * curvature * norm_sq
  best = 1.0 / (eta * curvature) if curvature > 0 else float("inf")
  return GradientDescentPrediction(c, predicted, eta, norm_sq, curvature, best)
