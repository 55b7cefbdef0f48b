"""Type aliases of the public API, as optax names its `Params` and `Updates`."""

from __future__ import annotations

from typing import Any, Callable

import jax

# A nest of containers (dicts, lists, tuples, NamedTuples, dataclasses registered with
# jax.tree_util) with arrays at its leaves.
PyTree = Any
# The model's parameters: a pytree of floating-point arrays (what is differentiated).
Params = PyTree
# What `loss_fn` takes besides the parameters: one minibatch, any pytree.
Batch = PyTree
# `loss_fn(params, batch) -> scalar`: the mean loss of one minibatch.
LossFn = Callable[[Params, Batch], jax.Array]
