"""Losses, and deterministic `loss_fn(params, batch)` closures over Flax Linen models.

The diagnostics differentiate `loss_fn` twice, so it must be a fixed function of
`(params, batch)`. For a model with BatchNorm and dropout that means choosing:
- BatchNorm: `train=True` normalises with the statistics of the given batch (the
  function SGD differentiates) and discards the running-average update; `train=False`
  uses the running averages (the evaluation function).
- Dropout: with `train=True` pass a fixed `dropout_key`, so every call, and every
  derivative, sees the same mask; or build the model with `dropout_rate=0`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of integer labels."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def linen_loss_fn(model: nn.Module, model_state: Mapping[str, Any], *, train: bool = True,
                  dropout_key: jax.Array | None = None,
                  loss: Callable = softmax_cross_entropy,
                  input_key: str = "image", label_key: str = "label") -> Callable:
  """`loss_fn(params, batch)` for a Linen classifier `model(x, train=...)`.

  Args:
    model: the module; its `__call__` takes the inputs and a `train` flag.
    model_state: the non-parameter collections (e.g. `{'batch_stats': ...}`), held fixed.
    train: BatchNorm on batch statistics and dropout on (see the module docstring).
    dropout_key: the fixed key for dropout masks when `train` is True.
    loss: `loss(logits, labels) -> scalar`.
    input_key, label_key: where the batch dict keeps inputs and labels.
  """
  mutable = list(model_state) if train and model_state else False
  rngs = None if dropout_key is None else {"dropout": dropout_key}

  def loss_fn(params, batch):
    variables = {"params": params, **model_state}
    out = model.apply(variables, batch[input_key], train=train, mutable=mutable, rngs=rngs)
    logits = out[0] if mutable else out  # the updated statistics are dropped
    return loss(logits, batch[label_key])

  return loss_fn


def batch_statistics(model: nn.Module, variables: Mapping[str, Any], inputs: jax.Array,
                     **kwargs) -> Any:
  """The statistics every BatchNorm of `model` normalises `inputs` with in training mode,
  shaped as `variables['batch_stats']`, whatever each layer's momentum.

  Two training-mode passes from running averages of 0 and of 1 give, per entry,
  (1 - m) b and m + (1 - m) b; their difference is the momentum m, hence b. Only the
  statistics differ between the two passes, so XLA computes the network once.
  """
  def new_stats(fill: float):
    start = jax.tree.map(lambda s: jnp.full_like(s, fill), variables["batch_stats"])
    _, state = model.apply({**variables, "batch_stats": start}, inputs, train=True,
                           mutable=["batch_stats"], **kwargs)
    return state["batch_stats"]

  low, high = new_stats(0.0), new_stats(1.0)
  return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), low, high)


def frozen_batch_stats_loss_fn(model: nn.Module, params: Any, model_state: Mapping[str, Any],
                               inputs: jax.Array, *, loss: Callable = softmax_cross_entropy,
                               input_key: str = "image", label_key: str = "label") -> Callable:
  """`loss_fn(params, batch)` with every BatchNorm frozen at the statistics of `inputs`
  (the training batch) at `params`: examples are then independent, so per-example
  gradients exist (`invmeasure.diagnostics.per_example_stats`), and on the whole batch
  it takes the training-mode loss's value. Its gradient holds the statistics fixed: it
  lacks the training gradient's path through them."""
  stats = jax.lax.stop_gradient(
      batch_statistics(model, {"params": params, **model_state}, inputs))
  frozen = {**model_state, "batch_stats": stats}

  def loss_fn(p, batch):
    logits = model.apply({"params": p, **frozen}, batch[input_key], train=False)
    return loss(logits, batch[label_key])

  return loss_fn
