"""The state a run checkpoints: everything needed to continue it bit for bit."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from invmeasure import diagnostics as dg


class RunState(NamedTuple):
  step: jax.Array            # optimizer steps done
  params: Any
  model_state: Any           # non-parameter collections, e.g. {'batch_stats': ...}
  opt_state: Any
  init_params: Any           # the weights at step 0, for the distance travelled
  sharpness_vector: Any      # last top eigenvector, warm start of the next round
  sums: dict                 # loss sums since the last row / in this epoch, last update norm
  # What a task carries from one step to the next besides the weights, one entry per row
  # of the global batch along every leaf's leading axis (e.g. Transformer-XL's memory);
  # () when nothing is carried.
  task_state: Any = ()


def per_step_fields(per_step: tuple[str, ...], params: Any = None) -> list[str]:
  """The training-row fields (`step_...`) the per-step quantities `per_step` produce:
  one per name, two for `noise_scale` and `tic`, one per parameter leaf and kind for
  `layer_norms` (`params` gives the leaves)."""
  fields = []
  for name in per_step:
    if name == "layer_norms":
      zeros = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
      fields += [f"step_layer_norms/{k}" for k in dg.layer_norms(
          grad=zeros, update=zeros, params=zeros, distance=zeros)]
    else:
      fields.append(f"step_{name}")
      fields += {"noise_scale": ["step_noise_scale_unbiased"],
                 "tic": ["step_hessian_trace"]}.get(name, [])
  return fields


def alpha_carry(params) -> dict:
  """What alpha carries from a step to the next: the step's update (the direction), the
  observation at its start, and whether there is one (not before the first step)."""
  zero = lambda: jnp.zeros((), jnp.float32)  # noqa: E731  (a buffer per leaf: see zero_sums)
  return {"direction": jax.tree.map(jnp.zeros_like, params),
          "start": dict(dg.StepLengthPoint(zero(), zero(), zero(), zero())._asdict()),
          "valid": zero()}


def zero_sums(per_step: tuple[str, ...] = (), params: Any = None) -> dict:
  """Loss sums since the last training row and in this epoch, the last update's norm,
  and a sum since the last row for each per-step field (`log_step_<field>`); with
  `alpha`, what it carries from step to step and its count of steps that have it."""
  names = ["log_loss", "log_count", "epoch_loss", "epoch_count", "update_norm"]
  names += [f"log_{field}" for field in per_step_fields(per_step, params)]
  if "alpha" in per_step:
    names += ["log_alpha_sum", "log_alpha_count"]
  # One array per leaf: built eagerly, shared leaves would be one buffer, which a step
  # that donates its state cannot take twice.
  sums: dict = {name: jnp.zeros((), jnp.float32) for name in names}
  if "alpha" in per_step:
    sums["alpha"] = alpha_carry(params)
  return sums


def init_run_state(init_variables: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                   key: jax.Array, task_state: Any = (), per_step: tuple[str, ...] = ()
                   ) -> RunState:
  """The state at step 0: `init_variables(key)` gives the model's variables ('params' and
  any other collections); the first sharpness vector is Gaussian; the sums hold one for
  each per-step quantity."""
  init_key, vector_key = jax.random.split(key)
  variables = dict(init_variables(init_key))
  params = variables.pop("params")
  vector = dg.tree_random_like(vector_key, params)
  return RunState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                  opt_state=tx.init(params), init_params=params, sharpness_vector=vector,
                  sums=zero_sums(per_step, params), task_state=task_state)


def state_shardings(state: RunState, mesh: Mesh) -> RunState:
  """Where each leaf of `state` (concrete or abstract) lives: `task_state` split by rows
  over the 'data' axis, like the batches it goes with; everything else on every device."""
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  shardings = jax.tree.map(lambda _: replicated, state._replace(task_state=()))
  return shardings._replace(task_state=jax.tree.map(lambda _: rows, state.task_state))

