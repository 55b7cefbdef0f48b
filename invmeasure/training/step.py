"""The pure train step and the diagnostic round, for image classifiers.

Both are functions of (state, batch) that `loop.py` jits over a device mesh. Randomness
(augmentation, dropout) comes from `fold_in(key, step)`, so a step's result depends on
nothing but the state and the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from invmeasure import diagnostics as dg
from invmeasure.data import augment
from invmeasure.models import losses
from invmeasure.training.state import RunState


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """What the step needs to know about the model, data and optimizer."""
  model: nn.Module
  tx: optax.GradientTransformation
  dataset: str                 # selects the normalisation statistics
  augmentation: str            # 'none' or 'crop_flip' (training batches only)
  weight_decay: float          # lambda of F = f + lambda/2 ||x||^2
  seed: int

  def preprocess(self, images: jax.Array, key: jax.Array | None) -> jax.Array:
    if key is not None and self.augmentation == "crop_flip":
      images = augment.random_crop_flip(key, images, padding=4)
    return augment.normalize(self.dataset, images)

  def batch_loss(self, params, model_state, images, labels, dropout_key):
    """Mean loss in training mode and the updated model state (BatchNorm statistics)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": dropout_key}
    if model_state:
      logits, new_state = self.model.apply(variables, images, train=True,
                                           mutable=list(model_state), rngs=rngs)
    else:
      logits, new_state = self.model.apply(variables, images, train=True, rngs=rngs), model_state
    return losses.softmax_cross_entropy(logits, labels), new_state


def make_train_step(task: ImageTask) -> Callable[[RunState, dict], tuple[RunState, dict]]:
  base_key = jax.random.key(task.seed)

  def train_step(state: RunState, batch: dict) -> tuple[RunState, dict]:
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, state.step))
    images = task.preprocess(batch["image"], augment_key)
    grad_fn = jax.value_and_grad(task.batch_loss, has_aux=True)
    (loss, model_state), grads = grad_fn(state.params, state.model_state, images,
                                         batch["label"], dropout_key)
    updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = dict(state.sums)
    for name in ("log", "epoch"):
      sums[f"{name}_loss"] = sums[f"{name}_loss"] + loss
      sums[f"{name}_count"] = sums[f"{name}_count"] + 1
    sums["update_norm"] = dg.tree_norm(updates)
    new_state = state._replace(step=state.step + 1, params=params, model_state=model_state,
                               opt_state=opt_state, sums=sums)
    return new_state, {"loss": loss}

  return train_step


class DiagnosticFns(NamedTuple):
  """The pieces of a diagnostic round; the loop jits each and drives them from Python.

  Separate calls, not one program with loops inside: XLA:CPU runs backward convolutions
  inside loops slowly, and unrolling them makes compile time grow with K and the number
  of power iterations. Each piece compiles once, whatever K and the iterations are.
  """
  init: Callable        # (state) -> gradient statistics accumulator
  accumulate: Callable  # (state, acc, minibatch) -> acc, one more minibatch gradient
  power_step: Callable  # (state, vector, minibatch) -> (eigenvalue, vector, residual)
  summarize: Callable   # (state, acc, minibatch, eigenvalue, residual) -> metric row


def make_diagnostic_fns(task: ImageTask) -> DiagnosticFns:
  """Measures the paper's quantities at the current weights on K fresh minibatches.

  The minibatches are un-augmented training images. The loss is the training-mode
  function (BatchNorm on each minibatch's own statistics, running averages untouched,
  one fixed dropout mask per round), i.e. the function whose gradient SGD follows.
  Sharpness is measured on the first minibatch, warm-started from the previous round's
  eigenvector.
  """
  base_key = jax.random.key(task.seed + 1)

  def loss_and_batch(state: RunState, minibatch: dict):
    key = jax.random.fold_in(base_key, state.step)
    loss_fn = losses.linen_loss_fn(task.model, state.model_state, train=True, dropout_key=key)
    return loss_fn, {"image": task.preprocess(minibatch["image"], None),
                     "label": minibatch["label"]}

  def init(state: RunState):
    return dg.gradient_stats_init(state.params)

  def accumulate(state: RunState, acc, minibatch: dict):
    loss_fn, batch = loss_and_batch(state, minibatch)
    return dg.gradient_stats_update(loss_fn, acc, state.params, batch)

  def power_step(state: RunState, vector, minibatch: dict):
    loss_fn, batch = loss_and_batch(state, minibatch)
    top = dg.sharpness(loss_fn, state.params, batch, init=vector, num_iters=1)
    return top.eigenvalue, top.eigenvector, top.residual

  def summarize(state: RunState, acc, minibatch: dict, eigenvalue, residual) -> dict:
    loss_fn, first = loss_and_batch(state, minibatch)
    params = state.params
    stats = dg.gradient_stats_finalize(acc)
    minibatch_grad = jax.grad(loss_fn)(params, first)
    update, _ = task.tx.update(minibatch_grad, state.opt_state, params)
    objective_grad = jax.tree.map(lambda g, p: g + task.weight_decay * p,
                                  stats.mean_gradient, params)
    return {
        "full_loss": stats.loss,
        "grad_norm": stats.grad_norm,
        "objective_grad_norm": dg.tree_norm(objective_grad),
        "noise_norm": stats.noise_norm,
        "grad_norm_sq_unbiased": stats.grad_norm_sq_unbiased,
        "noise_norm_sq_unbiased": stats.noise_norm_sq_unbiased,
        "sharpness": eigenvalue,
        "sharpness_residual": residual,
        "update_sharpness": dg.directional_sharpness(loss_fn, params, first, update),
        "gradient_sharpness": dg.directional_sharpness(loss_fn, params, first,
                                                       stats.mean_gradient),
        "minibatch_grad_norm": dg.tree_norm(minibatch_grad),
        "weight_norm": dg.tree_norm(params),
        "distance_from_init": dg.tree_norm(jax.tree.map(jnp.subtract, params, state.init_params)),
        "update_norm": state.sums["update_norm"],
    }

  return DiagnosticFns(init, accumulate, power_step, summarize)
