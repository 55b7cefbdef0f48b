"""Optimizers and learning-rate schedules from a config (optax)."""

from __future__ import annotations

import ml_collections
import optax

from invmeasure.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  num_train_steps: int) -> optax.Schedule:
  """Learning rate of every optimizer step, with optional linear warmup.

  step: multiply by `schedule.decay_factor` at each of `schedule.boundaries_epochs`.
  cosine: from the base rate to 0 over the run.
  """
  base = config.optimizer.learning_rate
  sched = config.schedule
  warmup = int(round(sched.get("warmup_epochs", 0.0) * steps_per_epoch))
  if sched.name == "constant":
    main = optax.constant_schedule(base)
  elif sched.name == "step":
    boundaries = {int(round(e * steps_per_epoch)) - warmup: sched.decay_factor
                  for e in sched.boundaries_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif sched.name == "cosine":
    main = optax.cosine_decay_schedule(base, max(num_train_steps - warmup, 1))
  else:
    raise ConfigError(f"config.schedule.name={sched.name!r} is unknown; choose one of "
                      f"{', '.join(SCHEDULES)}")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])
  return main


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum, Adam or AdamW; weight decay as L2 in the gradient (PyTorch) or
  decoupled (always for 'adamw', `optax.adamw`).

  With `optimizer.decoupled_weight_decay=False` (the paper's PyTorch code) the decay
  lambda x is added to the gradient before momentum, so SGD follows f + lambda/2 ||x||^2.
  """
  opt = config.optimizer
  decay = opt.get("weight_decay", 0.0)
  decoupled = opt.get("decoupled_weight_decay", False)
  if opt.name == "adamw":  # Adam with decoupled weight decay, as optax names it
    return optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                       eps=opt.get("eps", 1e-8), weight_decay=decay)
  if opt.name == "sgd":
    direction = optax.trace(decay=opt.momentum, nesterov=opt.get("nesterov", False))
  elif opt.name == "adam":
    direction = optax.scale_by_adam(b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                                    eps=opt.get("eps", 1e-8))
  else:
    raise ConfigError(f"config.optimizer.name={opt.name!r} is unknown; choose one of "
                      f"{', '.join(OPTIMIZERS)}")
  if not decay:
    parts = [direction]
  elif decoupled:
    parts = [direction, optax.add_decayed_weights(decay)]
  else:
    parts = [optax.add_decayed_weights(decay), direction]
  return optax.chain(*parts, optax.scale_by_learning_rate(schedule))


def objective_weight_decay(config: ml_collections.ConfigDict) -> float:
  """The lambda of the objective F = f + lambda/2 ||x||^2 whose gradient the optimizer
  sees: the weight decay when it is added to the gradient (L2, as PyTorch's SGD), 0 when
  it is decoupled (AdamW): a decoupled decay shrinks the weights outside the gradient, so
  no penalised objective is minimised and the objective is f itself."""
  opt = config.optimizer
  decoupled = opt.name == "adamw" or opt.get("decoupled_weight_decay", False)
  return 0.0 if decoupled else float(opt.get("weight_decay", 0.0))
