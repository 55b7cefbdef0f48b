"""The paper's synthetic example (section 3.4): gradient descent on a 1-D function.

Every registered function f is 1-Lipschitz (|f'| <= 1) and 1-smooth (|f''| <= 1), both
bounds tight, so L = 1 and the classical step-size threshold is 2 / L = 2. Below it,
gradient descent converges to a stationary point; above it, the minimum is unstable and
the iterates settle onto a periodic orbit whose loss and gradient norm converge only as
time (Birkhoff) averages, the latter to a nonzero value.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from invmeasure.training import metric_writer, storage
from invmeasure.errors import ConfigError

ScalarFn = Callable[[jax.Array], jax.Array]

# Lipschitz and smoothness constant shared by every function in FUNCTIONS.
SMOOTHNESS = 1.0
# Width of the left branch of `asymmetric_log_cosh`: its slope tends to -0.5 there.
_LEFT_WIDTH = 0.5


def log_cosh(x: jax.Array) -> jax.Array:
  """log cosh(x), written to stay finite for large |x|: f' = tanh, f'' = sech^2."""
  return jnp.logaddexp(x, -x) - math.log(2.0)


def asymmetric_log_cosh(x: jax.Array) -> jax.Array:
  """A log-cosh valley, half as wide on the left: c^2 log cosh(x / c) for x < 0, c = 1/2.

  f' is tanh(x) on the right and c tanh(x / c) on the left, f'' is sech^2(x) and
  sech^2(x / c); both branches agree up to the third derivative at 0. So |f'| < 1,
  |f''| <= 1 with equality at the minimum x = 0, and any step above 2 makes it unstable.
  Since the two sides differ, the points of the orbit that replaces it have different
  losses.
  """
  c = _LEFT_WIDTH
  return jnp.where(x >= 0, log_cosh(x), c * c * log_cosh(x / c))


def sine(x: jax.Array) -> jax.Array:
  """sin(x): minima at -pi/2 + 2 pi k with curvature 1; orbits around them are symmetric."""
  return jnp.sin(x)


FUNCTIONS: dict[str, ScalarFn] = {
    'asymmetric_log_cosh': asymmetric_log_cosh,
    'log_cosh': log_cosh,
    'sine': sine,
}


def get_function(name: str) -> ScalarFn:
  """Looks up a function of FUNCTIONS by name; raises ConfigError naming the choices."""
  try:
    return FUNCTIONS[name]
  except KeyError:
    choices = ', '.join(sorted(FUNCTIONS))
    raise ConfigError(
        f'config.function={name!r} is unknown; choose one of: {choices}') from None


class Trajectory(NamedTuple):
  """Gradient descent iterates; index t holds the state after t steps (0 is x0)."""
  x: jax.Array
  loss: jax.Array
  grad_norm: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 3))
def _descend(fn: ScalarFn, x0: jax.Array, lr: jax.Array, num_steps: int) -> Trajectory:
  value_and_grad = jax.value_and_grad(fn)

  def step(x, _):
    loss, grad = value_and_grad(x)
    return x - lr * grad, (x, loss, jnp.abs(grad))

  x_last, (xs, losses, grad_norms) = jax.lax.scan(step, x0, length=num_steps)
  loss_last, grad_last = value_and_grad(x_last)
  return Trajectory(
      x=jnp.append(xs, x_last),
      loss=jnp.append(losses, loss_last),
      grad_norm=jnp.append(grad_norms, jnp.abs(grad_last)))


def run_gradient_descent(fn: ScalarFn, x0: float, lr: float, num_steps: int) -> Trajectory:
  """Runs x_{t+1} = x_t - lr f'(x_t) for `num_steps` steps from `x0`.

  Args:
    fn: a scalar function of one scalar (e.g. an entry of FUNCTIONS); must be hashable,
      as it is a static argument of the compiled loop.
    x0: the starting point.
    lr: the step size.
    num_steps: how many steps to take.

  Returns:
    A Trajectory of arrays of length num_steps + 1: x_t, f(x_t) and |f'(x_t)|.
  """
  x0 = jnp.asarray(x0, dtype=jnp.result_type(float))
  return _descend(fn, x0, jnp.asarray(lr, x0.dtype), int(num_steps))


def cumulative_mean(values: jax.Array) -> jax.Array:
  """Running (Birkhoff) averages: entry t is the mean of values[0], ..., values[t]."""
  values = jnp.asarray(values)
  return jnp.cumsum(values) / jnp.arange(1, values.shape[0] + 1, dtype=values.dtype)


def _check_config(config: ml_collections.ConfigDict) -> None:
  if int(config.num_steps) < 1:
    raise ConfigError(f'config.num_steps={config.num_steps} must be at least 1')
  if int(config.log_every_steps) < 1:
    raise ConfigError(f'config.log_every_steps={config.log_every_steps} must be at least 1')
  lrs = tuple(config.learning_rates)
  if not lrs or any(not float(lr) > 0 for lr in lrs):
    raise ConfigError(
        f'config.learning_rates={lrs} must be a non-empty list of positive step sizes')


def _prepare_workdir(workdir: str) -> None:
  storage.check_workdir(workdir)  # ConfigError for a file, or gs:// without its libraries
  storage.makedirs(os.path.join(workdir, 'figures'))


def metric_rows(trajectory: Trajectory, lr: float, log_every_steps: int = 1) -> list[dict]:
  """The metric rows of one trajectory, one per logged step (step 0 is the start)."""
  loss_avg = cumulative_mean(trajectory.loss)
  grad_avg = cumulative_mean(trajectory.grad_norm)
  columns = jax.device_get((trajectory.x, trajectory.loss, trajectory.grad_norm,
                            loss_avg, grad_avg))
  rows = []
  for step in range(0, len(columns[0]), log_every_steps):
    x, loss, grad_norm, loss_time_avg, grad_norm_time_avg = (float(c[step]) for c in columns)
    rows.append({
        'step': step,
        'epoch': float(step),  # full-batch gradient descent: one step is one epoch
        'lr': float(lr),
        'x': x,
        'loss': loss,
        'grad_norm': grad_norm,
        'loss_time_avg': loss_time_avg,
        'grad_norm_time_avg': grad_norm_time_avg,
    })
  return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs gradient descent at each of `config.learning_rates` and records it in `workdir`.

  Writes `config.json` and `metrics.jsonl` (one row per logged step per learning rate,
  each naming its `lr`); `analysis.synthetic_figures.draw_run` draws its figure. Rerunning into the same workdir
  replaces these files.

  Returns:
    The metric rows, as written.
  Raises:
    ConfigError: an unknown `config.function`, a bad field, or a workdir that is a file.
  """
  fn = get_function(config.function)
  _check_config(config)
  _prepare_workdir(workdir)
  storage.write_text(os.path.join(workdir, 'config.json'), config.to_json(indent=2) + '\n')

  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  storage.path(metrics_path).unlink(missing_ok=True)
  rows = []
  with metric_writer.MetricWriter(metrics_path) as writer:
    for lr in config.learning_rates:
      trajectory = run_gradient_descent(fn, config.x0, lr, config.num_steps)
      for row in metric_rows(trajectory, lr, config.log_every_steps):
        writer.write(row)
        rows.append(row)

  return rows


def summarize(rows: list[dict]) -> str:
  """One line per learning rate: the last iterate and the final time averages."""
  last = {}
  for row in rows:
    last[row['lr']] = row
  return '\n'.join(
      f"lr={lr:g}: step {row['step']}, x={row['x']:.4f}, grad_norm={row['grad_norm']:.3g}, "
      f"loss_time_avg={row['loss_time_avg']:.4f}, "
      f"grad_norm_time_avg={row['grad_norm_time_avg']:.4f}"
      for lr, row in last.items())

