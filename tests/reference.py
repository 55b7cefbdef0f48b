"""Small random problems and independent dense references for the diagnostics tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def mlp_problem(seed: int, *, in_dim: int = 4, hidden: int = 5, out_dim: int = 3,
                batch: int = 16, dtype=jnp.float64):
  """A two-layer tanh MLP with softmax cross-entropy on random data.

  Returns (loss_fn, params, batch). Small enough for a dense Hessian (~40 parameters).
  """
  rng = np.random.default_rng(seed)
  params = {
      "dense1": {"w": rng.normal(size=(in_dim, hidden)) / np.sqrt(in_dim),
                 "b": 0.1 * rng.normal(size=(hidden,))},
      "dense2": {"w": rng.normal(size=(hidden, out_dim)) / np.sqrt(hidden),
                 "b": 0.1 * rng.normal(size=(out_dim,))},
  }
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  data = {"x": jnp.asarray(rng.normal(size=(batch, in_dim)), dtype),
          "y": jnp.asarray(rng.integers(0, out_dim, size=(batch,)))}
  return mlp_loss, params, data


def mlp_loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["dense1"]["w"] + params["dense1"]["b"])
  logits = h @ params["dense2"]["w"] + params["dense2"]["b"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))


def flat(tree) -> np.ndarray:
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def dense_hessian(loss_fn, params, batch) -> np.ndarray:
  """The full Hessian of loss_fn at params as a float64 numpy matrix (via jax.hessian)."""
  vec, unravel = ravel_pytree(params)
  hess = jax.jit(jax.hessian(lambda v: loss_fn(unravel(v), batch)))(vec)
  return np.asarray(hess, np.float64)


def dense_gradient(loss_fn, params, batch) -> np.ndarray:
  return flat(jax.grad(loss_fn)(params, batch))


def unflatten_like(params, vec: np.ndarray):
  return ravel_pytree(params)[1](jnp.asarray(vec))


def conv_problem(seed: int, *, batch: int = 8, dtype=jnp.float32):
  """A two-layer tanh CNN (3x3 convolutions, 6x6 images) with softmax cross-entropy.

  Returns (loss_fn, params, batch): a model whose backward pass has weight-gradient
  convolutions, the case XLA:CPU runs slowly inside loops (~400 parameters).
  """
  rng = np.random.default_rng(seed)
  params = {"conv1": rng.normal(size=(3, 3, 1, 4)) / 3.0,
            "conv2": rng.normal(size=(3, 3, 4, 4)) / 6.0,
            "dense": rng.normal(size=(4 * 3 * 3, 3)) / 6.0, "bias": 0.1 * rng.normal(size=3)}
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  data = {"x": jnp.asarray(rng.normal(size=(batch, 6, 6, 1)), dtype),
          "y": jnp.asarray(rng.integers(0, 3, size=(batch,)))}
  return conv_loss, params, data


def conv_loss(params, batch):
  conv = lambda x, w, stride: jax.lax.conv_general_dilated(
      x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jnp.tanh(conv(batch["x"], params["conv1"], 1))
  h = jnp.tanh(conv(h, params["conv2"], 2))
  logits = h.reshape(h.shape[0], -1) @ params["dense"] + params["bias"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=1))
