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


def zero_sums(per_step: tuple[str, ...] = ()) -> dict:
  """Loss sums since the last training row and in this epoch, the last update's norm,
  and a sum since the last row for each per-step quantity (`log_step_<name>`)."""
  zero = jnp.zeros((), jnp.float32)
  sums = {"log_loss": zero, "log_count": zero, "epoch_loss": zero, "epoch_count": zero,
          "update_norm": zero}
  sums.update({f"log_step_{name}": zero for name in per_step})
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
                  sums=zero_sums(per_step), task_state=task_state)


def state_shardings(state: RunState, mesh: Mesh) -> RunState:
  """Where each leaf of `state` (concrete or abstract) lives: `task_state` split by rows
  over the 'data' axis, like the batches it goes with; everything else on every device."""
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  shardings = jax.tree.map(lambda _: replicated, state._replace(task_state=()))
  return shardings._replace(task_state=jax.tree.map(lambda _: rows, state.task_state))

