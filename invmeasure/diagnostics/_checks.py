"""Input validation: one clear error per mistake, raised at trace time."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp


def check_params(params, name: str = "params") -> None:
  """Every leaf must be a floating-point array: derivatives need it."""
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; pass the model's parameter pytree")
  if _all_floating(tuple(_dtype(leaf) for leaf in leaves)):
    return
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = _dtype(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{name}{jax.tree_util.keystr(path)} has dtype {dtype}; diagnostics "
          "differentiate with respect to params, so every leaf must be floating point "
          "(move integer state such as step counters or batch statistics into the "
          "closure of loss_fn)")


def check_scalar_loss(loss_fn: Callable, params, batch) -> None:
  """loss_fn(params, batch) must return a real scalar (checked without running it)."""
  leaves, treedef = jax.tree.flatten((params, batch))
  specs = tuple((jnp.shape(leaf), _dtype(leaf)) for leaf in leaves)
  try:
    out = _loss_output(loss_fn, treedef, specs)
  except TypeError:  # an unhashable loss_fn: trace it every time
    out = _loss_output.__wrapped__(loss_fn, treedef, specs)
  shape = getattr(out, "shape", None)
  if shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
        f"loss_fn(params, batch) must return a floating-point scalar, got "
        f"{type(out).__name__} with shape {shape} and dtype {getattr(out, 'dtype', None)}; "
        "reduce the per-example losses with a mean")


# These checks run on every call: cached, they cost microseconds (jnp.result_type and
# tracing loss_fn cost far more).
def _dtype(leaf):
  dtype = getattr(leaf, "dtype", None)
  return dtype if dtype is not None else jnp.result_type(leaf)


@functools.lru_cache(maxsize=256)
def _all_floating(dtypes: tuple) -> bool:
  return all(jnp.issubdtype(d, jnp.floating) for d in dtypes)


@functools.lru_cache(maxsize=256)
def _loss_output(loss_fn: Callable, treedef, specs):
  """The shape of loss_fn's output, traced once per loss_fn and input structure."""
  args = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*spec) for spec in specs])
  return jax.eval_shape(loss_fn, *args)


def leading_axis_size(batches, name: str = "batches") -> int:
  """K, the size of the leading axis every leaf of `batches` must share."""
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError(f"{name} has no array leaves")
  sizes: dict[int, str] = {}
  for path, leaf in leaves:
    shape = jnp.shape(leaf)
    if not shape:
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} is a scalar; every leaf needs a leading "
          "axis of K minibatches")
    sizes.setdefault(shape[0], jax.tree_util.keystr(path))
  if len(sizes) > 1:
    listed = ", ".join(f"{p or '<root>'} has {k}" for k, p in sizes.items())
    raise ValueError(
        f"{name} leaves disagree on the number of minibatches K (leading axis): "
        f"{listed}; stack the same K minibatches in every leaf")
  return next(iter(sizes))
