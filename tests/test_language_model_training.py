"""The training driver on Transformer-XL: configs/wt103_transformerxl.py:tiny (2 layers of
width 32 on the synthetic tiny_text stream) end to end, the memory carried between steps
and emptied at each epoch, exact resume after SIGKILL, devices, and bad input."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import wt103_transformerxl
from invmeasure.training import loop
from invmeasure.training.errors import ConfigError
from tests.driver import (REPO, assert_rows_close, assert_same_params, command, final_params,
                          kill_when, rows, run)

CONFIG = "configs/wt103_transformerxl.py:tiny"
# The tiny run: 60 steps, training rows every 2, diagnostic rounds every 20, checkpoints
# every 10; 20,000 tokens in 16 rows of 1,250 make epochs of 39 segments of 32 tokens.
STEPS, STEPS_PER_EPOCH = 60, 39


def metrics_text(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return f.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted tiny run on the 8 simulated devices of tests/conftest.py."""
  workdir = str(tmp_path_factory.mktemp("lm_reference"))
  run(workdir, config=CONFIG)
  return workdir


def test_rows_follow_the_metrics_contract_and_the_loss_falls(reference):
  table = rows(reference)
  assert [r["step"] for r in table if "train_loss" in r] == list(range(2, STEPS + 1, 2))
  diag_rows = [r for r in table if "grad_norm" in r]
  assert [r["step"] for r in diag_rows] == [0, 20, 40, 60]
  for r in diag_rows:
    for field in ("full_loss", "grad_norm", "objective_grad_norm", "noise_norm", "sharpness",
                  "gradient_sharpness", "weight_norm", "distance_from_init"):
      assert np.isfinite(r[field]), (field, r["step"])
    # No weight decay: the objective is the loss.
    assert r["objective_grad_norm"] == pytest.approx(r["grad_norm"])
  assert all(np.isfinite(r["train_loss"]) for r in table if "train_loss" in r)
  assert all(abs(r["epoch"] - r["step"] / STEPS_PER_EPOCH) < 1e-12 for r in table)
  assert [r["step"] for r in table if "epoch_avg_train_loss" in r] == [STEPS_PER_EPOCH]
  train_losses = [r["train_loss"] for r in table if "train_loss" in r]
  assert train_losses[-1] < train_losses[0] - 0.5
  assert diag_rows[-1]["full_loss"] < diag_rows[0]["full_loss"] - 0.5
  config = json.load(open(os.path.join(reference, "config.json")))
  assert config["dataset"] == "tiny_text" and config["model"]["name"] == "transformer_xl"


def test_the_memory_is_carried_between_steps_and_emptied_at_each_epoch():
  config = wt103_transformerxl.get_config("tiny")
  plan = loop.make_plan(config)
  task = plan.task
  # Not donating: the test steps from the same state twice.
  step = jax.jit(task.train_step, in_shardings=(plan.state_sharding, plan.batch_sharding),
                 out_shardings=(plan.state_sharding, plan.replicated))
  batch = lambda t: {k: jax.make_array_from_process_local_data(plan.batch_sharding, v)
                     for k, v in task.train_batch(t).items()}
  empty = jax.device_put(task.model.init_mems(config.batch_size), plan.state_sharding.task_state)
  state = loop.init_state_fn(plan)(loop.init_key(config))
  for t in range(20):  # trained a little, the attention is no longer uniform
    state, _ = step(state, batch(t))
  memory = state.task_state
  assert memory.hidden.sharding.spec == P("data")
  np.testing.assert_array_equal(memory.length, [config.model.mem_len] * config.batch_size)

  carried = float(step(state, batch(20))[1]["loss"])
  reset = float(step(state._replace(task_state=empty), batch(20))[1]["loss"])
  # Bits differ only through the memory: equal inputs give equal bits, as below shows.
  assert carried != reset, carried
  # Step 39 starts the second epoch: the memory of the previous step is dropped.
  np.testing.assert_array_equal(task.train_batch(STEPS_PER_EPOCH)["memory_length"], 0)
  at_epoch_start = [float(step(state._replace(task_state=m), batch(STEPS_PER_EPOCH))[1]["loss"])
                    for m in (memory, empty)]
  assert at_epoch_start[0] == at_epoch_start[1]


def test_sigkill_then_resume_gives_identical_rows_weights_and_memory(reference, tmp_path):
  workdir = str(tmp_path / "killed")
  process = subprocess.Popen(command(workdir, config=CONFIG), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  kill_when(process, workdir, STEPS // 2)
  assert process.returncode != 0 and rows(workdir)[-1]["step"] < STEPS, "killed mid-run"
  run(workdir, config=CONFIG)
  # The same bytes: NaN fields too (the update of the last cosine step is 0).
  assert metrics_text(workdir) == metrics_text(reference)
  step, state = final_params(workdir)
  ref_step, ref_state = final_params(reference)
  assert step == ref_step == STEPS
  assert_same_params(state, ref_state)  # weights, optimizer state and memory


def test_one_device_matches_eight(reference, tmp_path):
  one_env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  run(str(tmp_path / "one"), env=one_env, config=CONFIG)
  assert_rows_close(rows(str(tmp_path / "one")), rows(reference))


@pytest.mark.parametrize("arg,field,value,expected", [
    ("tiny", "model.name", "resnet", "config.model.name='resnet' does not fit "
                                     "config.dataset='tiny_text'"),
    ("tiny", "model.tgt_len", 2000, "hold no segment of config.model.tgt_len=2000"),
    ("tiny", "batch_size", 12, "config.batch_size=12 does not split over 8 devices"),
    ("", "batch_size", 60, "config.batch_size=60 does not split over 8 devices"),
    ("tiny", "data_dir", "MISSING", "python -m invmeasure.data.wikitext103"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, arg, field, value, expected):
  config = wt103_transformerxl.get_config(arg)
  if value == "MISSING":  # an empty TFDS dir: WikiText-103 not prepared
    config.dataset, value = "wikitext103", str(tmp_path / "tfds")
  *parents, leaf = field.split(".")
  target = config
  for parent in parents:
    target = target[parent]
  target[leaf] = value
  workdir = tmp_path / "never"
  with pytest.raises(ConfigError, match=expected.replace("(", r"\(")) as info:
    loop.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()


def test_full_config_is_the_papers_figure_3_setting():
  config = wt103_transformerxl.get_config()
  model = config.model
  assert (model.n_layer, model.d_model, model.n_head, model.d_head, model.d_inner) == (
      4, 410, 10, 41, 2100)
  assert (model.dropout, model.dropatt, tuple(model.cutoffs), model.div_val,
          model.tie_weight) == (0.1, 0.0, (20000, 40000, 200000), 1, True)
  assert (model.tgt_len, model.mem_len, config.batch_size) == (150, 150, 60)
  assert (config.optimizer.name, config.optimizer.learning_rate, config.schedule.name,
          config.num_train_steps, config.schedule.warmup_epochs) == (
              "adam", 2.5e-4, "cosine", 200000, 0.0)
  assert config.diagnostics.sharpness_iters == 5
  constant = wt103_transformerxl.get_config("constant,lr=1e-4")
  assert (constant.schedule.name, constant.optimizer.learning_rate) == ("constant", 1e-4)
  sgd = wt103_transformerxl.get_config("sgd")
  assert (sgd.optimizer.name, sgd.optimizer.momentum) == ("sgd", 0.9)
  with pytest.raises(ValueError, match="'huge'"):
    wt103_transformerxl.get_config("huge")
