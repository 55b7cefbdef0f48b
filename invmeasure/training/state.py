"""The state a run checkpoints: everything needed to continue it bit for bit."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class RunState(NamedTuple):
  step: jax.Array            # optimizer steps done
  params: Any
  model_state: Any           # non-parameter collections, e.g. {'batch_stats': ...}
  opt_state: Any
  init_params: Any           # the weights at step 0, for the distance travelled
  sharpness_vector: Any      # last top eigenvector, warm start of the next round
  sums: dict                 # loss sums since the last row / in this epoch, last update norm


def zero_sums() -> dict:
  zero = jnp.zeros((), jnp.float32)
  return {"log_loss": zero, "log_count": zero, "epoch_loss": zero, "epoch_count": zero,
          "update_norm": zero}


def init_run_state(model, tx, example_images, key: jax.Array) -> RunState:
  init_key, vector_key = jax.random.split(key)
  variables = dict(model.init(init_key, example_images, train=False))
  params = variables.pop("params")
  vector = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape, p.dtype), params,
                        _split_like(vector_key, params))
  return RunState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                  opt_state=tx.init(params), init_params=params, sharpness_vector=vector,
                  sums=zero_sums())


def _split_like(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))
