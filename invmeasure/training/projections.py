"""Fixed random projections of the weights: a few numbers per step that trace the
empirical measure of the iterates without storing the weights.

Direction i is a Gaussian pytree like the weights scaled by 1/sqrt(num params), so its
norm is ~1 and <d_i, x - y> ~ N(0, ||x - y||^2 / num params): distances between
projections are the weights' distances scaled by 1/sqrt(num params) on average. The
directions are regenerated from the seed at every call instead of being stored, so they
cost no memory (a copy of the weights each, otherwise).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from invmeasure import diagnostics as dg

PROJECTIONS_FILE = "projections.jsonl"


def make_projection(num_directions: int, seed: int) -> Callable:
  """`params -> (num_directions,)` array of <d_i, params>, the d_i fixed by `seed`."""
  # RBG keys: threefry's per-leaf bit generation compiles slowly on large models.
  key = jax.random.key(seed, impl="rbg")

  def project(params) -> jax.Array:
    scale = 1.0 / jnp.sqrt(jnp.float32(dg.tree_size(params)))

    def one(i):
      direction = dg.tree_random_like(jax.random.fold_in(key, i), params)
      return dg.tree_vdot(direction, params) * scale

    # A lax loop is fine here (no convolutions), and keeps compile time flat in n.
    return jax.lax.map(one, jnp.arange(num_directions))

  return project
