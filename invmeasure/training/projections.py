"""Fixed random projections of the weights: a few numbers per step that trace the
empirical measure of the iterates without storing the weights.

Direction i is a Gaussian pytree like the weights scaled by 1/sqrt(num params), so its
norm is ~1 and <d_i, x - y> ~ N(0, ||x - y||^2 / num params): distances between
projections are the weights' distances scaled by 1/sqrt(num params) on average.
Small models keep the directions (`num_directions` copies of the weights); large ones
regenerate them from the seed at every call, trading time for that memory. Both give the
same directions.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from invmeasure import diagnostics as dg

PROJECTIONS_FILE = "projections.jsonl"
# Keep the directions when they take at most this much memory (per device).
STORED_DIRECTIONS_BYTES = 64 * 2**20


def _direction_fn(seed: int, params) -> Callable:
  """i -> direction i, a pytree like `params`."""
  # RBG keys: threefry's per-leaf bit generation compiles slowly on large models.
  key = jax.random.key(seed, impl="rbg")
  scale = 1.0 / jnp.sqrt(jnp.float32(dg.tree_size(params)))
  return lambda i: jax.tree.map(lambda d: d * scale,
                                dg.tree_random_like(jax.random.fold_in(key, i), params))


def make_projection(num_directions: int, seed: int) -> Callable:
  """`params -> (num_directions,)` array of <d_i, params>, regenerating the d_i."""

  def project(params) -> jax.Array:
    direction = _direction_fn(seed, params)
    # A lax loop is fine here (no convolutions) and holds one direction at a time.
    return jax.lax.map(lambda i: dg.tree_vdot(direction(i), params), jnp.arange(num_directions))

  return project


def make_directions(num_directions: int, seed: int, params):
  """The directions of `make_projection`, stacked on a leading axis of each leaf."""
  return jax.lax.map(_direction_fn(seed, params), jnp.arange(num_directions))


def project_on(directions, params) -> jax.Array:
  """(num_directions,) array of <d_i, params> for stacked `directions`."""
  parts = [jnp.tensordot(d.reshape(d.shape[0], -1), p.reshape(-1), axes=1,
                         preferred_element_type=jnp.float32)
           for d, p in zip(jax.tree.leaves(directions), jax.tree.leaves(params))]
  return sum(parts)


def projection_for(num_directions: int, seed: int, params, **jit_kwargs) -> Callable:
  """A jitted `params -> projections`: stored directions for a model whose directions
  fit in STORED_DIRECTIONS_BYTES, regenerated ones otherwise."""
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  if num_directions * size > STORED_DIRECTIONS_BYTES:
    return jax.jit(make_projection(num_directions, seed), **jit_kwargs)
  directions = jax.jit(make_directions, static_argnums=(0, 1), **jit_kwargs)(
      num_directions, seed, params)
  project = jax.jit(project_on, **jit_kwargs)  # directions as an argument, not a constant
  return lambda p: project(directions, p)
