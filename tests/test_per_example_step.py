"""The per-example instruments inside the train step (`config.diagnostics.per_step`): the
same values as the library computes outside the step, rows that average them (alpha over
the steps that have it), exact resume, ResNets with BatchNorm frozen at the batch's own
statistics, and one-line errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import quickstart
from invmeasure import diagnostics as dg
from invmeasure.models import losses, resnet
from invmeasure.training import config_checks, loop, step as step_lib
from invmeasure.training.errors import ConfigError
from tests import driver

ECONOMY = "norm_test,inner_test,ortho_test,alpha,layer_norms"
EVERY = "norm_test,inner_test,ortho_test,gsnr,noise_scale,tic,alpha,layer_norms"


def _config(per_step=EVERY):
  config = quickstart.get_config("tiny")
  config.diagnostics.per_step = per_step
  return config


def test_step_fields_equal_the_library_outside_the_step():
  config = _config()
  plan, state = driver.plan_and_state(config)
  task = plan.task
  train_step = jax.jit(loop.train_step_fn(plan))  # as the driver traces it; no donation

  @jax.jit
  def measure(params, batch, directions, step):
    """The same quantities from the library, outside the step (one program)."""
    augment_key, dropout_key = jax.random.split(step_lib.step_key(config.seed, step))
    data = {"image": task.preprocess(batch["image"], augment_key), "label": batch["label"]}
    loss_fn = lambda p, b: task.batch_loss(p, {}, b["image"], b["label"], dropout_key)[0]  # noqa: E731
    stats = dg.per_example_stats(loss_fn, params, data, directions=directions)
    trace = dg.hessian_trace(loss_fn, params, data, num_samples=1, unroll=True,
                             key=jax.random.fold_in(step_lib.step_key(config.seed, step), 1))
    want = {"step_norm_test": dg.norm_test(stats), "step_inner_test": dg.inner_test(stats),
            "step_ortho_test": dg.ortho_test(stats), "step_gsnr": dg.mean_gsnr(stats),
            "step_noise_scale": dg.noise_scale(stats).simple,
            "step_noise_scale_unbiased": dg.noise_scale(stats).unbiased,
            "step_hessian_trace": trace.estimate,
            "step_tic": dg.tic(stats, trace.estimate)}
    return stats, want, jax.grad(loss_fn)(params, data)

  outside = []
  for step in range(2):
    batch = jax.device_put(task.train_batch(step), plan.batch_sharding)
    before = state
    state, metrics = train_step(state, batch)
    update = jax.tree.map(jnp.subtract, state.params, before.params)
    directions = [outside[-1][1]] if outside else [update]
    # Outside on one device, from host copies: a real check of the step's sharded pass
    # (XLA's partitioning of per-example convolution gradients was wrong on 8 devices).
    stats, want, grads = measure(*jax.device_get((before.params, batch,
                                                  directions + [update])), before.step)
    if outside:  # alpha ends the previous step here
      previous_stats, previous_update = outside[-1]
      t = dg.tree_norm(previous_update)
      want["step_alpha"] = dg.normalized_step_length(
          dg.step_length_point(previous_stats, 1, t), dg.step_length_point(stats, 0, t), t)
    else:
      assert np.isnan(metrics["step_alpha"])
    for name, value in want.items():
      np.testing.assert_allclose(metrics[name], value, rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(metrics["step_layer_norms/grad/Conv_0/kernel"],
                               jnp.linalg.norm(grads["Conv_0"]["kernel"]), rtol=1e-5)
    np.testing.assert_allclose(metrics["step_layer_norms/update/Dense_0/bias"],
                               jnp.linalg.norm(update["Dense_0"]["bias"]), rtol=1e-5)
    outside.append((stats, update))


def test_rows_average_every_field_and_alpha_over_the_steps_that_have_it(tmp_path):
  config = _config("norm_test,alpha,layer_norms")
  config.num_train_steps = 6
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  reference = str(tmp_path / "reference")
  loop.train_and_evaluate(config, reference)
  rows = [r for r in driver.rows(reference) if "train_loss" in r]
  per_step = driver.replayed_step_metrics(config, 6)
  assert [r["step"] for r in rows] == [3, 6]
  assert "step_layer_norms/distance/Conv_0/kernel" in rows[0]
  for row, chunk in zip(rows, (per_step[:3], per_step[3:])):
    for key in (k for k in chunk[0] if k.startswith("step_")):
      np.testing.assert_allclose(row[key], np.nanmean([m[key] for m in chunk]), rtol=1e-5,
                                 err_msg=key)
  # Stopped at step 3 and resumed: the same rows, alpha's carry included.
  resumed = str(tmp_path / "resumed")
  config.num_train_steps = 3
  loop.train_and_evaluate(config, resumed)
  config.num_train_steps = 6
  loop.train_and_evaluate(config, resumed)
  training = lambda rows: [{k: v for k, v in r.items()  # noqa: E731
                            if k in ("step", "train_loss") or k.startswith("step_")}
                           for r in rows if "train_loss" in r]
  driver.assert_rows_close(training(driver.rows(resumed)), training(driver.rows(reference)),
                           rtol=1e-6)


def test_resnet_batchnorm_frozen_at_the_batch_statistics_in_float64(seed):
  with jax.enable_x64():
    model = resnet.resnet(18, 3, "cifar", width=2, dtype=jnp.float64)
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(4, 6, 6, 3)))
    labels = jnp.asarray(rng.integers(0, 3, size=4))
    variables = model.init(jax.random.key(0), images[:1])
    params = jax.tree.map(lambda a: a.astype(jnp.float64), variables["params"])
    # Running averages far from the batch's, as after some training.
    state = {"batch_stats": jax.tree.map(lambda a: a.astype(jnp.float64) + 0.5,
                                         variables["batch_stats"])}
    batch = {"image": images, "label": labels}
    frozen = losses.frozen_batch_stats_loss_fn(model, params, state, images)
    training = losses.linen_loss_fn(model, state, train=True)
    # Jitted: op by op, a ResNet compiles each of its hundreds of operations on its own.
    np.testing.assert_allclose(jax.jit(frozen)(params, batch), jax.jit(training)(params, batch),
                               rtol=1e-12)
    # Per example: the loop of one-example losses with those statistics held fixed.
    stats = jax.jit(lambda p, b: dg.per_example_stats(frozen, p, b, chunk_size=2))(params, batch)
    grad = jax.jit(jax.grad(frozen))  # one example at a time: compiled once
    grads = [grad(params, jax.tree.map(lambda a: a[i:i + 1], batch)) for i in range(4)]
    flat = np.stack([np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in grads])
    np.testing.assert_allclose(stats.sq_norms, (flat ** 2).sum(1), rtol=1e-8)
    np.testing.assert_allclose(stats.mean_dots, flat @ flat.mean(0), rtol=1e-8)


def test_a_resnet_run_measures_them():
  config = _config("norm_test,noise_scale,alpha,layer_norms")
  config.model = ml_collections.ConfigDict({"name": "resnet", "depth": 18, "stem": "cifar",
                                            "width": 2})
  plan, state = driver.plan_and_state(config)
  step = jax.jit(loop.train_step_fn(plan))
  for s in range(2):
    state, metrics = step(state, jax.device_put(plan.task.train_batch(s), plan.batch_sharding))
  for name in ("step_norm_test", "step_noise_scale", "step_alpha"):
    assert np.isfinite(metrics[name]), name
  assert metrics["step_norm_test"] > 0


@pytest.mark.parametrize("per_step,change,message", [
    ("cabs", {}, "names 'cabs', defined for SGD without momentum or weight decay only"),
    ("early_stopping", {}, "names 'early_stopping', defined for SGD without momentum"),
    ("norm_test", {"dataset": "wikitext103"}, "the language-model task does not measure"),
])
def test_misuse_is_a_one_line_error(per_step, change, message):
  config = _config(per_step)
  if change:
    from configs import wt103_transformerxl
    config = wt103_transformerxl.get_config("tiny")
    config.diagnostics.per_step = per_step
  with pytest.raises(ConfigError, match=message) as error:
    config_checks.check_config(config, 8)
  assert "\n" not in str(error.value)


def test_cabs_and_early_stopping_run_under_plain_sgd():
  config = _config("cabs,early_stopping")
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config_checks.check_config(config, 1)
  plan, state = driver.plan_and_state(config)
  _, metrics = jax.jit(loop.train_step_fn(plan))(
      state, jax.device_put(plan.task.train_batch(0), plan.batch_sharding))
  assert metrics["step_cabs"] > 0 and np.isfinite(metrics["step_early_stopping"])


def test_an_eagerly_built_state_has_a_buffer_per_leaf_and_can_be_donated():
  from invmeasure.training import state as state_lib
  params = {"w": jnp.ones((3,)), "b": jnp.zeros(())}
  sums = state_lib.zero_sums(("alpha", "norm_test", "gsnr"), params)
  leaves = jax.tree.leaves(sums)
  assert len({leaf.unsafe_buffer_pointer() for leaf in leaves}) == len(leaves)
  donated = jax.jit(lambda tree: jax.tree.map(lambda x: x + 1, tree), donate_argnums=0)(sums)
  assert all(float(jnp.sum(leaf)) >= 0 for leaf in jax.tree.leaves(donated))
