"""Random projections of the weights: the directions, and the rows the driver writes."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import quickstart
from invmeasure.training import loop, projections
from tests.driver import projection_rows


def _tree(rng, shapes):
  return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in shapes.items()}


def test_projection_is_linear_with_fixed_unit_scale_gaussian_directions(seed):
  rng = np.random.default_rng(seed)
  shapes = {"a": (40, 30), "b": (50,), "c": (3, 4, 5)}
  size = sum(int(np.prod(s)) for s in shapes.values())
  project = jax.jit(projections.make_projection(6, seed))
  x, y = _tree(rng, shapes), _tree(rng, shapes)
  combined = jax.tree.map(lambda u, v: 2.0 * u - 3.0 * v, x, y)
  np.testing.assert_allclose(project(combined), 2.0 * project(x) - 3.0 * project(y),
                             rtol=1e-4, atol=1e-4)
  # The entries of the directions: projections of the basis vectors, one leaf at a time.
  entries = []
  for name, shape in shapes.items():
    n = int(np.prod(shape))
    basis = jnp.eye(n, dtype=jnp.float32).reshape(n, *shape)
    zeros = {k: jnp.zeros((n, *s), jnp.float32) for k, s in shapes.items() if k != name}
    entries.append(np.asarray(jax.vmap(project)({name: basis, **zeros})))
  directions = np.concatenate(entries).T * np.sqrt(size)  # (6, size), ~N(0, 1) each
  assert abs(directions.mean()) < 5 / np.sqrt(directions.size)
  assert abs(directions.var() - 1) < 5 * np.sqrt(2 / directions.size)
  correlation = np.corrcoef(directions)
  assert np.max(np.abs(correlation - np.eye(6))) < 5 / np.sqrt(size), "directions differ"
  again = np.asarray(jax.jit(projections.make_projection(6, seed))(x))
  np.testing.assert_array_equal(again, project(x))


def test_each_update_row_is_the_change_of_the_weights_projection(tmp_path):
  config = quickstart.get_config("tiny")
  config.num_train_steps = 6
  config.diagnostics.every_steps = 0
  config.diagnostics.projection_every_steps = 1
  loop.train_and_evaluate(config, str(tmp_path))
  table = projection_rows(str(tmp_path))
  assert [r["step"] for r in table] == list(range(7))
  for before, after in zip(table, table[1:]):
    change = np.subtract(after["weights"], before["weights"])
    np.testing.assert_allclose(after["update"], change, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(change) > 0


def test_stored_and_regenerated_directions_give_the_same_projections(seed):
  rng = np.random.default_rng(seed)
  params = _tree(rng, {"w": (30, 20), "b": (20,)})
  stored = projections.projection_for(5, seed, params)
  regenerated = jax.jit(projections.make_projection(5, seed))
  np.testing.assert_allclose(stored(params), regenerated(params), rtol=1e-5, atol=1e-6)
  limit = projections.STORED_DIRECTIONS_BYTES
  try:
    projections.STORED_DIRECTIONS_BYTES = 0  # forces the regenerating form
    np.testing.assert_allclose(projections.projection_for(5, seed, params)(params),
                               regenerated(params), rtol=1e-6)
  finally:
    projections.STORED_DIRECTIONS_BYTES = limit
