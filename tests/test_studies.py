"""Studies at fixed weights restored from a run: restoring, the estimator study's
references and Gram-matrix estimates, the step-size study, and their figures."""

import dataclasses
import itertools
import os

import jax
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from configs import digits_interpolation  # un-augmented: a finite training set
from invmeasure.studies import figures as study_figures
from invmeasure.data import batching, sources
from invmeasure.studies import estimators, restore, step_size
from invmeasure.training import loop
from invmeasure.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A 12-step run of the quickstart's tiny network on un-augmented digits (checkpoints
  every 4 steps), trained in-process."""
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  config = digits_interpolation.get_config("tiny")
  loop.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def restored(tiny_run):
  """(plan, {step: state}) of every checkpoint of the tiny run."""
  steps = restore.checkpoint_steps(tiny_run)
  plan, states = restore.load_run_states(tiny_run, steps)
  return plan, dict(zip(steps, states))


def _full_data(plan, state):
  """(loss_fn, all training examples as one batch) of the diagnostic loss at `state`."""
  examples = restore.training_set(plan.task)
  return plan.task.diagnostic_loss(state, examples)


def test_restored_weights_are_the_runs_weights(tiny_run, restored):
  plan, states = restored
  steps = restore.checkpoint_steps(tiny_run)
  assert steps[-1] == 12 and 8 in steps and set(steps) <= {4, 8, 12}
  _, latest = restore.load_run_state(tiny_run)
  assert int(latest.step) == 12
  # Replay the run's 12 training steps from its initial state, independently of the loop.
  config = restore.load_config(tiny_run)
  assert config.model.widths == (8,) and isinstance(config.model.widths, tuple)
  state = loop.init_state_fn(plan)(loop.init_key(config))
  train_step = loop.jit_train_step(plan)
  replayed = {}
  for step in range(12):
    batch = jax.device_put(plan.task.train_batch(step), plan.batch_sharding)
    state, _ = train_step(state, batch)
    replayed[step + 1] = jax.tree.map(np.asarray, state.params)
  for step in (8, 12):
    for ours, theirs in zip(jax.tree.leaves(states[step].params),
                            jax.tree.leaves(replayed[step])):
      np.testing.assert_array_equal(np.asarray(ours), theirs)
  for ours, theirs in zip(jax.tree.leaves(latest.params), jax.tree.leaves(replayed[12])):
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_restore_errors_name_the_workdir_and_steps(tiny_run, tmp_path):
  with pytest.raises(ConfigError, match=r"no checkpoint at step 5; it has steps .*12"):
    restore.load_run_state(tiny_run, 5)
  with pytest.raises(ConfigError, match="has no config.json"):
    restore.load_run_state(str(tmp_path))
  assert restore.checkpoint_steps(str(tmp_path)) == []


def test_per_example_gradients_give_the_full_loss_and_gradient(restored, seed):
  plan, states = restored
  state = restore.on_one_device(states[12])
  fns = estimators.unit_functions(plan.task)
  examples = restore.training_set(plan.task)
  units = {k: v[:, None] for k, v in examples.items()}
  losses, grads = estimators.unit_losses_and_gradients(fns, state, units, chunk=256)
  # Against jax.grad of the mean loss over all 1,500 examples in one batch.
  loss_fn, batch = _full_data(plan, state)
  loss, grad = jax.value_and_grad(loss_fn)(state.params, batch)
  np.testing.assert_allclose(losses.mean(), float(loss), rtol=1e-5)
  np.testing.assert_allclose(grads.astype(np.float64).mean(0),
                             np.asarray(ravel_pytree(grad)[0], np.float64),
                             rtol=1e-4, atol=1e-7)
  # And an explicit loop over a few random examples, one at a time.
  for i in np.random.default_rng(seed).choice(len(losses), 3, replace=False):
    one = {k: v[i:i + 1] for k, v in examples.items()}
    fn, b = plan.task.diagnostic_loss(state, one)
    value, g = jax.value_and_grad(fn)(state.params, b)
    np.testing.assert_allclose(losses[i], float(value), rtol=1e-5)
    np.testing.assert_allclose(grads[i], np.asarray(ravel_pytree(g)[0]), rtol=1e-4, atol=1e-7)


def test_noise_formula_matches_exhaustive_enumeration(seed):
  rng = np.random.default_rng(seed)
  n, b = 7, 3
  vectors = rng.standard_normal((n, 5))
  mean = vectors.mean(0)
  variance = np.mean(np.sum((vectors - mean) ** 2, 1))
  without = np.mean([np.sum((vectors[list(s)].mean(0) - mean) ** 2)
                     for s in itertools.combinations(range(n), b)])
  with_ = np.mean([np.sum((vectors[list(s)].mean(0) - mean) ** 2)
                   for s in itertools.product(range(n), repeat=b)])
  np.testing.assert_allclose(estimators.minibatch_noise(variance, n, b), without, rtol=1e-12)
  np.testing.assert_allclose(estimators.minibatch_noise(variance, n, b, replace=True), with_,
                             rtol=1e-12)
  # The study's draws are the rounds' draws: each minibatch without replacement.
  drawn = batching.diagnostic_indices(seed, 3, 50, 32, 40)
  assert all(len(set(row)) == 32 for row in drawn)


def test_gram_estimates_match_direct_minibatch_gradients(restored, seed):
  plan, states = restored
  state = restore.on_one_device(states[8])
  fns = estimators.unit_functions(plan.task)
  examples = restore.training_set(plan.task)
  losses, grads = estimators.unit_losses_and_gradients(
      fns, state, {k: v[:, None] for k, v in examples.items()}, chunk=512)
  gram = estimators.gram_matrix(grads)
  minibatches = batching.diagnostic_indices(seed, 0, 5, 32, len(losses))
  minibatches[2, :4] = minibatches[2, 4]  # a repeated example counts with its multiplicity
  direct_grads, direct_losses = [], []
  for rows in minibatches:
    fn, b = plan.task.diagnostic_loss(state, {k: v[rows] for k, v in examples.items()})
    value, g = jax.value_and_grad(fn)(state.params, b)
    direct_losses.append(float(value))
    direct_grads.append(np.asarray(ravel_pytree(g)[0], np.float64))
  g = np.stack(direct_grads)
  g_bar = g.mean(0)
  spread = np.sum((g - g_bar) ** 2)
  got = estimators.minibatch_estimates(gram, losses, minibatches)
  np.testing.assert_allclose(got["loss"], np.mean(direct_losses), rtol=1e-5)
  np.testing.assert_allclose(got["grad_norm_sq"], g_bar @ g_bar, rtol=1e-4)
  np.testing.assert_allclose(got["noise_sq"], spread / 5, rtol=1e-4)
  np.testing.assert_allclose(got["noise_sq_corrected"], spread / 4, rtol=1e-4)
  np.testing.assert_allclose(got["grad_norm_sq_corrected"], g_bar @ g_bar - spread / 20,
                             rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def study(restored):
  """Many cheap repeats (no sharpness) at small n, and a few with sharpness."""
  plan, states = restored
  return estimators.estimator_convergence(plan, states[12], (1, 2, 4, 64), 300,
                                          seed=int(np.random.default_rng().integers(1 << 30)),
                                          sharpness_repeats=3, sharpness_iters=10)


def test_study_references_are_the_exact_full_data_values(restored, study):
  plan, states = restored
  assert study.reference_kind == "exact" and study.num_examples == 1500
  state = restore.on_one_device(states[12])
  loss_fn, batch = _full_data(plan, state)
  loss, grad = jax.value_and_grad(loss_fn)(state.params, batch)
  flat = np.asarray(ravel_pytree(grad)[0], np.float64)
  np.testing.assert_allclose(study.quantities["loss"].reference, float(loss), rtol=1e-5)
  np.testing.assert_allclose(study.quantities["grad_norm_sq"].reference, flat @ flat,
                             rtol=1e-4)
  # The exact noise against brute-force Monte Carlo over 400 fresh minibatches: the mean
  # of 400 i.i.d. squared deviations is within 5 standard errors of its expectation.
  draws = batching.diagnostic_indices(12345, 0, 400, 32, 1500)
  examples = restore.training_set(plan.task)
  stacked = {k: v[draws] for k, v in examples.items()}

  def minibatch_gradient(minibatch):
    fn, b = plan.task.diagnostic_loss(state, minibatch)
    return ravel_pytree(jax.grad(fn)(state.params, b))[0]

  per_batch = jax.jit(jax.vmap(minibatch_gradient))(stacked)
  deviations = np.sum((np.asarray(per_batch, np.float64) - flat) ** 2, 1)
  stderr = deviations.std(ddof=1) / np.sqrt(len(deviations))
  assert abs(deviations.mean() - study.quantities["noise_sq"].reference) < 5 * stderr


def test_bias_correction_removes_the_jensen_bias(study):
  q = study.quantities["grad_norm_sq"]
  noise = study.quantities["noise_sq"].reference
  for i, n in enumerate(q.sample_sizes[:3]):
    plain_err = q.plain_mean[i] - q.reference
    # The plain estimate's expected excess is noise / n; 5 standard errors over repeats.
    stderr = np.nanstd(q.plain[i], ddof=1) / np.sqrt(q.plain.shape[1])
    assert abs(plain_err - noise / n) < 5 * stderr + 1e-12
    if n >= 2:
      corr_err = q.corrected_mean[i] - q.reference
      corr_stderr = np.nanstd(q.corrected[i], ddof=1) / np.sqrt(q.corrected.shape[1])
      assert abs(corr_err) < 5 * corr_stderr
      assert abs(corr_err) < abs(plain_err)
  noise_q = study.quantities["noise_sq"]
  assert np.isnan(noise_q.plain[0]).all() and np.isnan(q.corrected[0]).all()
  stderr = np.std(noise_q.corrected[1], ddof=1) / np.sqrt(noise_q.corrected.shape[1])
  assert abs(noise_q.corrected_mean[1] - noise) < 5 * stderr
  # The sufficiency rule as documented, and the sharpness estimated in 3 repeats only.
  for quantity in study.quantities.values():
    within = quantity.plain_within
    n = quantity.plain_sufficient_n
    if n is not None:
      assert np.all(within[list(quantity.sample_sizes).index(n):] >= study.coverage)
  sharp = study.quantities["sharpness"].plain
  assert np.isfinite(sharp[:, :3]).all() and np.isnan(sharp[:, 3:]).all()


def test_sharpness_matches_dense_hessian_on_a_tiny_model(seed):
  # A 350-parameter CNN on 100 of the digits, so that the dense Hessian is cheap.
  config = digits_interpolation.get_config("tiny")
  config.model.widths = (2,)
  plan = loop.make_plan(config)
  subset = sources.ArraySource(plan.task.source[np.arange(100)])
  plan = plan._replace(task=dataclasses.replace(plan.task, source=subset, num_examples=100))
  state = restore.on_one_device(loop.init_state_fn(plan)(jax.random.key(seed, impl="rbg")))
  result = estimators.estimator_convergence(plan, state, (1,), 1, seed=seed,
                                            sharpness_tol=1e-5, sharpness_iters=200,
                                            reference_iters=200)
  assert result.reference_kind == "exact" and result.num_examples == 100
  flat, unravel = ravel_pytree(state.params)
  examples = subset[np.arange(100)]

  def top(rows):
    loss_fn, batch = plan.task.diagnostic_loss(state, {k: v[rows] for k, v in examples.items()})
    hessian = jax.jit(jax.hessian(lambda x: loss_fn(unravel(x), batch)))(flat)
    return np.linalg.eigvalsh(np.asarray(hessian, np.float64))[-1]

  assert flat.size < 400
  np.testing.assert_allclose(result.quantities["sharpness"].reference, top(np.arange(100)),
                             rtol=1e-3)
  drawn = batching.diagnostic_indices(seed, 0, 1, 32, 100)[0]
  np.testing.assert_allclose(result.quantities["sharpness"].plain[0, 0], top(drawn),
                             rtol=1e-3)


def test_pool_references_when_the_loss_is_not_a_mean_over_examples(seed):
  # BatchNorm on batch statistics: a minibatch's gradient is not the mean of its
  # examples' gradients, so the references come from a pool of whole minibatches.
  config = digits_interpolation.get_config("tiny")
  config.model.batchnorm = True
  plan = loop.make_plan(config)
  state = restore.on_one_device(loop.init_state_fn(plan)(jax.random.key(seed, impl="rbg")))
  result = estimators.estimator_convergence(plan, state, (1, 3), 2, seed=seed, pool_size=5,
                                            sharpness_repeats=1, sharpness_iters=3,
                                            reference_iters=3)
  assert result.reference_kind == "pool" and result.num_examples == 5
  losses, grads = [], []
  for minibatch in plan.task.diagnostic_batches(estimators.POOL_ROUND + seed, 5, 32):
    fn, b = plan.task.diagnostic_loss(state, minibatch)
    value, g = jax.value_and_grad(fn)(state.params, b)
    losses.append(float(value))
    grads.append(np.asarray(ravel_pytree(g)[0], np.float64))
  g = np.stack(grads)
  spread = np.sum((g - g.mean(0)) ** 2)
  refs = {name: q.reference for name, q in result.quantities.items()}
  np.testing.assert_allclose(refs["loss"], np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(refs["grad_norm_sq"], g.mean(0) @ g.mean(0) - spread / 20,
                             rtol=1e-4)
  np.testing.assert_allclose(refs["noise_sq"], spread / 4, rtol=1e-4)
  assert np.isfinite(result.quantities["sharpness"].plain[:, 0]).all()
  with pytest.raises(ConfigError, match="exceeds pool_size=5"):
    estimators.estimator_convergence(plan, state, (8,), 1, seed=seed, pool_size=5)


def test_lanczos_top_eigenvalue_matches_eigh(seed):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((60, 60))
  matrix = a @ a.T / 60 - np.eye(60)
  got = estimators.top_eigenvalue(lambda v: matrix @ v, 60, num_iters=60, tol=1e-10,
                                  rng=rng)
  np.testing.assert_allclose(got.value, np.linalg.eigvalsh(matrix)[-1], rtol=1e-8)


def test_step_size_study_matches_a_hand_computed_step(restored, seed):
  plan, states = restored
  chosen = [states[8], states[12]]
  scales = (0.0, 0.5, 1.0)
  result = step_size.step_size_study(plan, chosen, scales, num_minibatches=3, seed=seed)
  assert result.objective_change.shape == (2, 3, 3)
  assert np.all(result.objective_change[:, :, 0] == 0.0)
  assert np.all(result.loss_change[:, :, 0] == 0.0)
  np.testing.assert_allclose(result.mean_objective_change,
                             result.objective_change.mean((0, 1)))
  np.testing.assert_allclose(result.stderr_objective_change,
                             result.per_state_objective_change.std(0, ddof=1) / np.sqrt(2))
  assert result.stderr_unit == "states"
  # One (state, minibatch, scale) by hand: the update applied with jax.tree.map, F over
  # all examples in one batch plus the weight decay.
  s, k, c = 1, 2, 0.5
  state = restore.on_one_device(chosen[s])
  examples = restore.training_set(plan.task)
  rows = batching.diagnostic_indices(seed, s, 3, 32, 1500)[k]
  fn, b = plan.task.diagnostic_loss(state, {name: v[rows] for name, v in examples.items()})
  grad = jax.grad(fn)(state.params, b)
  update, _ = plan.task.optimization.tx.update(grad, state.opt_state, state.params)
  moved = jax.tree.map(lambda p, u: p + c * u, state.params, update)
  loss_fn, batch = _full_data(plan, state)
  decay = plan.task.weight_decay
  def objective(params):
    x = np.asarray(ravel_pytree(params)[0], np.float64)
    return float(loss_fn(params, batch)) + 0.5 * decay * (x @ x)
  expected = objective(moved) - objective(state.params)
  np.testing.assert_allclose(result.objective_change[s, k, 1], expected, rtol=2e-3, atol=2e-6)
  np.testing.assert_allclose(result.loss[s], float(loss_fn(state.params, batch)), rtol=1e-5)
  # The second-order prediction for plain gradient descent, against the actual change.
  full_grad = jax.grad(loss_fn)(state.params, batch)
  objective_grad = jax.tree.map(lambda g, p: g + decay * p, full_grad, state.params)
  flat_grad = np.asarray(ravel_pytree(objective_grad)[0], np.float64)
  prediction = step_size.gd_prediction(plan, chosen[s], (0.0, 0.05))
  eta = prediction.learning_rate
  np.testing.assert_allclose(prediction.objective_grad_norm_sq, flat_grad @ flat_grad,
                             rtol=1e-4)
  stepped = jax.tree.map(lambda p, g: p - 0.05 * eta * g, state.params, objective_grad)
  actual = objective(stepped) - objective(state.params)
  assert prediction.predicted_change[0] == 0.0
  np.testing.assert_allclose(prediction.predicted_change[1], actual, rtol=0.05)
  # The SGD update is linear in the learning rate given the state.
  sgd = optax.chain(optax.add_decayed_weights(decay), optax.trace(decay=0.9),
                    optax.scale_by_learning_rate(lambda count: 0.05))
  half, _ = sgd.update(grad, state.opt_state, state.params)
  for u, h in zip(jax.tree.leaves(update), jax.tree.leaves(half)):
    np.testing.assert_allclose(np.asarray(h), 0.5 * np.asarray(u), rtol=1e-6, atol=1e-9)


def test_bad_inputs_raise_one_line_errors(restored):
  plan, states = restored
  state = states[12]
  for kwargs, pattern in (({"sample_sizes": (0, 2)}, "must be >= 1"),
                          ({"tolerance": 0.0}, "tolerance=0.0 must be > 0"),
                          ({"sample_sizes": ()}, "sample_sizes is empty")):
    args = {"sample_sizes": (1, 2), "num_repeats": 2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=pattern) as error:
      estimators.estimator_convergence(plan, state, **args)
    assert "\n" not in str(error.value)
  with pytest.raises(ConfigError, match="states is empty"):
    step_size.step_size_study(plan, [])


def test_figures_are_written(study, restored, tmp_path):
  plan, states = restored
  result = step_size.step_size_study(plan, [states[12]], (0.0, 0.5, 1.0), num_minibatches=2,
                                     seed=0)
  assert result.stderr_unit == "minibatches"
  paths = [study_figures.estimator_figure(study, str(tmp_path / "a" / "estimators.png")),
           study_figures.step_size_figure(result, str(tmp_path / "step_size.png"))]
  for path in paths:
    assert os.path.getsize(path) > 10_000
  assert study.as_dict()["quantities"]["loss"]["reference"] > 0
  assert result.as_dict()["best_scale"] in (0.0, 0.5, 1.0)
