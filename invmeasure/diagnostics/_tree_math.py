"""Linear algebra on pytrees of arrays (the vectors the diagnostics work with)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from invmeasure.diagnostics._types import PyTree


def tree_add(x: PyTree, y: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, x, y)


def tree_sub(x: PyTree, y: PyTree) -> PyTree:
  return jax.tree.map(jnp.subtract, x, y)


def tree_scale(alpha, x: PyTree) -> PyTree:
  return jax.tree.map(lambda leaf: (alpha * leaf).astype(leaf.dtype), x)


def tree_axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
  """Returns alpha * x + y."""
  return jax.tree.map(lambda a, b: (alpha * a + b).astype(b.dtype), x, y)


def tree_vdot(x: PyTree, y: PyTree) -> jax.Array:
  """Inner product <x, y> of two pytrees of one structure, accumulated in at least float32.

  Args:
    x: a pytree of arrays.
    y: a pytree of arrays with the same structure and shapes.

  Returns:
    A scalar: the sum over leaves of their elementwise products.
  """
  parts = [jnp.vdot(a, b, preferred_element_type=_acc_dtype(a))
           for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))]
  return sum(parts[1:], parts[0])


def tree_norm_sq(x: PyTree) -> jax.Array:
  return tree_vdot(x, x)


def tree_norm(x: PyTree) -> jax.Array:
  """Euclidean norm of a pytree seen as one flat vector, accumulated in at least float32."""
  return jnp.sqrt(tree_norm_sq(x))


def tree_normalize(x: PyTree) -> PyTree:
  return tree_scale(1.0 / tree_norm(x), x)


def tree_zeros_like(x: PyTree) -> PyTree:
  return jax.tree.map(jnp.zeros_like, x)


def tree_size(x: PyTree) -> int:
  """Number of entries over all leaves (the dimension of the parameter space): a Python int."""
  return sum(leaf.size for leaf in jax.tree.leaves(x))


def tree_random_like(key: jax.Array, x: PyTree, kind: str = "normal") -> PyTree:
  """A random pytree shaped like `x`: 'normal' or 'rademacher' (+-1) entries.

  Args:
    key: PRNG key; each leaf gets its own key split from it.
    x: a pytree of arrays; the result has its structure, shapes and dtypes.
    kind: 'normal' (standard Gaussian) or 'rademacher' (+1 or -1, each with
      probability 1/2).
  """
  leaves, treedef = jax.tree.flatten(x)
  keys = jax.random.split(key, len(leaves))
  if kind == "normal":
    sample = jax.random.normal
  elif kind == "rademacher":
    sample = jax.random.rademacher
  else:
    raise ValueError(f"kind must be 'normal' or 'rademacher', got {kind!r}")
  # A flat draw reshaped: the same numbers as drawing the leaf's shape (the counter is
  # the flat index), but XLA:CPU compiles it about 6x faster (benchmarks/loop_choices.py).
  draw = lambda k, leaf: sample(k, (leaf.size,), leaf.dtype).reshape(leaf.shape)
  return jax.tree.unflatten(treedef, [draw(k, leaf) for k, leaf in zip(keys, leaves)])


def _acc_dtype(a):
  return jnp.promote_types(a.dtype, jnp.float32)
