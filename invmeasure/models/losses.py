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
