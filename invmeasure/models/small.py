"""Small Flax Linen models for tests, benchmarks and the quickstart."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Fully connected network with tanh hidden layers."""
  features: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    for width in self.features:
      x = jnp.tanh(nn.Dense(width, param_dtype=x.dtype)(x))
    return nn.Dense(self.num_classes, param_dtype=x.dtype)(x)


class SmallCNN(nn.Module):
  """Conv (+ BatchNorm) + ReLU + average-pool blocks, optional dropout, dense head.

  `train` selects batch statistics (and updates the running ones) and turns dropout on.
  """
  widths: Sequence[int] = (32, 64, 64)
  num_classes: int = 10
  use_batchnorm: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = x.dtype
    for width in self.widths:
      x = nn.Conv(width, (3, 3), use_bias=not self.use_batchnorm, param_dtype=dtype)(x)
      if self.use_batchnorm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, param_dtype=dtype)(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, param_dtype=dtype)(x)
