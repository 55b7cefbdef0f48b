"""Tests of the synthetic 1-D experiment, its metric writer and its entry point."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invmeasure.training import metric_writer
from invmeasure.training import synthetic_1d
from invmeasure.training.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
FIELDS = {'step', 'epoch', 'lr', 'x', 'loss', 'grad_norm', 'loss_time_avg',
          'grad_norm_time_avg'}


def _asymmetric_log_cosh_grad(x: np.ndarray) -> np.ndarray:
  """f' of asymmetric_log_cosh by hand, independent of the library and of autodiff."""
  return np.where(x >= 0, np.tanh(x), 0.5 * np.tanh(2.0 * x))


def _reference_orbit(lr: float, x0: float = 2.0, num_steps: int = 2000) -> np.ndarray:
  """The attracting periodic orbit of x -> x - lr f'(x), in float64 NumPy."""
  xs = [x0]
  for _ in range(num_steps):
    xs.append(xs[-1] - lr * _asymmetric_log_cosh_grad(np.float64(xs[-1])))
  tail = np.array(xs[-64:])
  for period in range(1, 33):
    if np.allclose(tail[period:], tail[:-period], atol=1e-10):
      return tail[-period:]
  raise AssertionError(f'no period up to 32 at lr={lr}')


@pytest.mark.parametrize('name', sorted(synthetic_1d.FUNCTIONS))
def test_lipschitz_and_smoothness_constants_are_one(name):
  fn = synthetic_1d.FUNCTIONS[name]
  with jax.enable_x64(True):
    grid = jnp.linspace(-40.0, 40.0, 200_001, dtype=jnp.float64)
    grad = jax.vmap(jax.grad(fn))(grid)
    curvature = jax.vmap(jax.grad(jax.grad(fn)))(grid)
    max_slope, max_curvature = float(jnp.abs(grad).max()), float(jnp.abs(curvature).max())
  assert max_slope <= 1.0 + 1e-12
  assert max_curvature <= 1.0 + 1e-12
  # Both bounds are tight, so L = 1 and 2 / L = 2 is the threshold.
  assert max_slope > 1.0 - 1e-6
  assert max_curvature > 1.0 - 1e-6


def test_below_threshold_converges_to_stationary_point():
  trajectory = synthetic_1d.run_gradient_descent(
      synthetic_1d.asymmetric_log_cosh, x0=2.0, lr=1.5, num_steps=200)
  assert trajectory.x.shape == (201,)
  assert float(trajectory.grad_norm[-1]) < 1e-6
  assert abs(float(trajectory.x[-1])) < 1e-5


def test_above_threshold_oscillates_and_time_averages_converge():
  lr = 3.3
  orbit = _reference_orbit(lr)
  assert len(orbit) == 4
  orbit_grad_norm = float(np.mean(np.abs(_asymmetric_log_cosh_grad(orbit))))
  orbit_loss = float(np.mean(synthetic_1d.asymmetric_log_cosh(orbit)))
  assert np.ptp(np.asarray(synthetic_1d.asymmetric_log_cosh(orbit))) > 0.1

  trajectory = synthetic_1d.run_gradient_descent(
      synthetic_1d.asymmetric_log_cosh, x0=2.0, lr=lr, num_steps=4000)
  x = np.asarray(trajectory.x)
  assert np.abs(np.diff(x[-50:])).min() > 0.3
  np.testing.assert_allclose(np.sort(x[-4:]), np.sort(orbit), atol=1e-4)

  grad_avg = np.asarray(synthetic_1d.cumulative_mean(trajectory.grad_norm))
  loss_avg = np.asarray(synthetic_1d.cumulative_mean(trajectory.loss))
  for averages, orbit_mean in ((grad_avg, orbit_grad_norm), (loss_avg, orbit_loss)):
    assert np.ptp(averages[-100:]) < 1e-3
    assert abs(averages[-1] - orbit_mean) < 5e-3
  assert orbit_grad_norm > 0.1
  assert grad_avg[-1] > 0.1


def test_cumulative_mean_is_running_mean():
  values = np.array([3.0, 1.0, 2.0, 6.0])
  np.testing.assert_allclose(synthetic_1d.cumulative_mean(values), [3.0, 2.0, 2.0, 3.0])


def test_unknown_function_names_config_field():
  with pytest.raises(ConfigError, match=r'config\.function.*asymmetric_log_cosh'):
    synthetic_1d.get_function('cosine')


def test_metric_writer_round_trip_and_truncated_last_line(tmp_path):
  path = str(tmp_path / 'sub' / 'metrics.jsonl')
  with metric_writer.MetricWriter(path) as writer:
    writer.write({'step': 0, 'loss': np.float32(1.5)})
    writer.write({'step': 1, 'loss': jnp.asarray(0.5)})
  with open(path, 'a', encoding='utf-8') as f:
    f.write('{"step": 2, "lo')  # a crash mid-write
  assert metric_writer.read_metrics(path) == [
      {'step': 0, 'loss': 1.5}, {'step': 1, 'loss': 0.5}]

  with metric_writer.MetricWriter(path) as writer:
    writer.write({'step': 2, 'loss': 0.25})
  assert [row['step'] for row in metric_writer.read_metrics(path)] == [0, 1, 2]


def test_read_metrics_rejects_bad_line_in_the_middle(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    metric_writer.read_metrics(str(path))


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'experiments.run', '--config=configs/synthetic_1d.py', *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_entry_point_end_to_end(tmp_path):
  workdir = tmp_path / 'run'
  result = _run(f'--workdir={workdir}', '--config.num_steps=30')
  assert result.returncode == 0, result.stderr

  rows = metric_writer.read_metrics(str(workdir / 'metrics.jsonl'))
  assert len(rows) == 2 * 31
  assert all(set(row) == FIELDS for row in rows)
  assert [row['lr'] for row in rows] == [1.5] * 31 + [3.3] * 31
  assert [row['step'] for row in rows[:31]] == list(range(31))
  assert all(row['epoch'] == row['step'] for row in rows)
  assert rows[0]['x'] == 2.0

  config = json.loads((workdir / 'config.json').read_text())
  assert config['num_steps'] == 30 and config['function'] == 'asymmetric_log_cosh'
  figures = list((workdir / 'figures').glob('*.png'))
  assert figures
  assert all(figure.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for figure in figures)


@pytest.mark.parametrize('make_args, expected', [
    (lambda tmp: [f'--workdir={tmp / "a_file"}'], 'error: --workdir='),
    (lambda tmp: [f'--workdir={tmp}', '--config.function=cosine'],
     'error: config.function='),
    (lambda tmp: [f'--workdir={tmp}', '--config.experiment=bogus'],
     'error: config.experiment='),
    (lambda tmp: [f'--workdir={tmp}', '--config.experiment=train'],
     'error: config.dataset is missing'),
], ids=['workdir_is_a_file', 'unknown_function', 'unknown_experiment',
        'train_without_training_fields'])
def test_entry_point_bad_input_is_one_line(tmp_path, make_args, expected):
  (tmp_path / 'a_file').write_text('not a directory')
  result = _run(*make_args(tmp_path))
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(expected), result.stderr
  assert sum(line.startswith('error:') for line in lines) == 1
