"""Per-step diagnostics from the pure train step (`config.diagnostics.per_step`): each
equals the same quantity computed outside the step, training rows average them over the
log interval, and the empty default changes no row."""

import jax
import numpy as np
import pytest

from configs import quickstart, wt103_transformerxl
from invmeasure import diagnostics as dg
from invmeasure.training import config_checks, loop, step as step_lib
from invmeasure.training.errors import ConfigError
from tests import driver

ALL = "grad_norm,update_norm,update_sharpness"


def test_step_metrics_equal_the_quantities_computed_outside_the_step():
  config = quickstart.get_config("tiny")  # augmented, so the step's own draw matters
  config.diagnostics.per_step = ALL
  plan, state = driver.plan_and_state(config)
  task = plan.task
  train_step = jax.jit(task.train_step)  # the loop's step without donation: `before` stays
  for step in range(3):
    batch = jax.device_put(task.train_batch(step), plan.batch_sharding)
    before = state
    state, metrics = train_step(state, batch)
    # Outside the step: the same augmentation draw, gradient, optimizer update.
    augment_key, dropout_key = jax.random.split(step_lib.step_key(config.seed, before.step))
    images = task.preprocess(batch["image"], augment_key)
    loss_fn = lambda p, b: task.batch_loss(p, before.model_state, b["image"], b["label"],  # noqa: E731
                                           dropout_key)[0]
    data = {"image": images, "label": batch["label"]}
    grads = jax.grad(loss_fn)(before.params, data)
    updates, _ = task.optimization.tx.update(grads, before.opt_state, before.params)
    np.testing.assert_allclose(metrics["step_grad_norm"], dg.tree_norm(grads), rtol=1e-6)
    np.testing.assert_allclose(metrics["step_update_norm"], dg.tree_norm(updates), rtol=1e-6)
    np.testing.assert_allclose(metrics["step_update_sharpness"],
                               dg.directional_sharpness(loss_fn, before.params, data, updates),
                               rtol=1e-5)
    moved = jax.tree.map(lambda a, b: a - b, state.params, before.params)
    np.testing.assert_allclose(dg.tree_norm(moved), metrics["step_update_norm"], rtol=1e-5)


def test_rows_average_the_step_metrics_over_the_log_interval(tmp_path):
  config = quickstart.get_config("tiny")
  config.diagnostics.per_step = ALL
  config.num_train_steps = 6
  config.log_every_steps = 3
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  rows = [r for r in driver.rows(str(tmp_path / "run")) if "train_loss" in r]
  # Replay the six steps and average each quantity over steps 1-3 and 4-6.
  per_step = driver.replayed_step_metrics(config, 6)
  assert [r["step"] for r in rows] == [3, 6]
  for row, chunk in zip(rows, (per_step[:3], per_step[3:])):
    for key in (k for k in chunk[0] if k.startswith("step_")):
      np.testing.assert_allclose(row[key], np.mean([m[key] for m in chunk]), rtol=1e-6)
    np.testing.assert_allclose(row["train_loss"], np.mean([m["loss"] for m in chunk]),
                               rtol=1e-6)


def test_the_empty_default_adds_no_field_and_measuring_changes_no_trajectory(tmp_path):
  config = quickstart.get_config("tiny")
  config.num_train_steps = 8
  assert config.diagnostics.per_step == ""
  loop.train_and_evaluate(config, str(tmp_path / "default"))
  default = driver.rows(str(tmp_path / "default"))
  assert not any(k.startswith("step_") for r in default for k in r)
  config.diagnostics.per_step = ALL
  loop.train_and_evaluate(config, str(tmp_path / "measured"))
  measured = driver.rows(str(tmp_path / "measured"))
  stripped = [{k: v for k, v in r.items() if not k.startswith("step_")} for r in measured]
  driver.assert_rows_close(stripped, default, rtol=1e-5)
  assert all(f"step_{n}" in r for r in measured if "train_loss" in r for n in ALL.split(","))


def test_the_language_model_step_measures_them_too():
  config = wt103_transformerxl.get_config("tiny")
  config.diagnostics.per_step = "grad_norm,update_sharpness"
  plan, state = driver.plan_and_state(config)
  batch = jax.device_put(plan.task.train_batch(0), plan.batch_sharding)
  _, metrics = loop.jit_train_step(plan)(state, batch)
  assert set(metrics) == {"loss", "step_grad_norm", "step_update_sharpness"}
  assert np.isfinite(metrics["step_update_sharpness"]) and metrics["step_grad_norm"] > 0


def test_unknown_per_step_name_is_a_one_line_error():
  config = quickstart.get_config("tiny")
  config.diagnostics.per_step = "grad_norm,hessian_trace"
  with pytest.raises(ConfigError, match="per_step names 'hessian_trace', which is unknown"):
    config_checks.check_config(config, 8)
