"""The Figure 3 twin (configs/text_transformerxl.py): its corpus read from this Python's
pydoc_data, the diagnostic rounds on the function training follows, and a :tiny run."""

import builtins
import hashlib
import json
import os
import platform

import jax
import numpy as np
import pytest
from pydoc_data import topics

from configs import text_transformerxl
from invmeasure.analysis import regime
from invmeasure.data import pydoc_text, text_sources
from invmeasure.training import loop, optim
from invmeasure.training.errors import ConfigError
from tests.driver import rows, run

CONFIG = "configs/text_transformerxl.py:tiny"


def test_corpus_is_this_pythons_topics_as_bytes_with_its_hash_recorded():
  text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
  data = pydoc_text.corpus_bytes()
  assert data.decode("utf-8") == text  # bytes round-trip to the joined topics
  record = text_transformerxl.get_config().corpus
  assert record["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
  assert record["python_version"] == platform.python_version()
  assert record["num_tokens"] == len(text.encode("utf-8"))
  assert record["train_tokens"] + record["heldout_tokens"] == record["num_tokens"]


def test_heldout_blocks_are_every_twentieth_4kib_block_disjoint_from_training():
  ids = np.arange(pydoc_text.BLOCK_BYTES * 45 + 100) % 251  # positions tagged by value
  positions = np.arange(len(ids))
  mask = pydoc_text.heldout_mask(len(ids))
  held = positions[mask]
  assert set(held // pydoc_text.BLOCK_BYTES) == {19, 39}  # interleaved, 1 in 20
  assert len(held) == 2 * pydoc_text.BLOCK_BYTES
  train = pydoc_text.split_tokens(ids.astype(np.uint8), "train")
  heldout = pydoc_text.split_tokens(ids.astype(np.uint8), "heldout")
  np.testing.assert_array_equal(heldout, ids[mask])
  np.testing.assert_array_equal(train, ids[~mask])  # in order, nothing lost or shared
  stream, vocab = text_sources.load_stream("pydoc_topics", "heldout")
  assert vocab == 256 and len(stream) == text_transformerxl.get_config().corpus["heldout_tokens"]


def test_missing_pydoc_data_is_a_one_line_error_naming_the_package(monkeypatch):
  real_import = builtins.__import__

  def no_pydoc(name, *args, **kwargs):
    if name.startswith("pydoc_data"):
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_pydoc)
  pydoc_text.corpus_bytes.cache_clear()  # read afresh, without the module
  with pytest.raises(ConfigError, match="pydoc_data") as error:
    pydoc_text.corpus_bytes()
  assert "\n" not in str(error.value) and "install" in str(error.value)


def test_a_recorded_corpus_from_another_python_is_refused():
  config = text_transformerxl.get_config("tiny")
  config.corpus.sha256 = "0" * 64
  with pytest.raises(ConfigError, match="config.corpus.sha256"):
    loop.make_plan(config)


def test_round_loss_equals_the_train_steps_loss_on_the_same_segment_weights_and_memory():
  config = text_transformerxl.get_config("tiny")
  plan = loop.make_plan(config)
  task = plan.task
  state = loop.init_state_fn(plan)(loop.init_key(config))
  # Weights far from their initialisation, where attention reads the memory.
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(np.random.randint(2 ** 31)), len(leaves))
  state = state._replace(params=jax.tree.unflatten(tree, [
      p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]))
  minibatch = task.diagnostic_batches(7, 1, config.batch_size)[0]
  loss_fn, batch = task.diagnostic_loss(state, minibatch)
  round_loss = jax.jit(loss_fn)(state.params, batch)
  # The memory the segment's preceding tokens leave, then a train step on the segment.
  # Jitted: op by op, the model compiles each of its operations on its own.
  _, memory = jax.jit(lambda p, x: task.model.apply({"params": p}, x, None, False))(
      state.params, batch["prefix"])
  segment = {"inputs": batch["inputs"], "targets": batch["targets"],
             "memory_length": np.full(config.batch_size, task.model.mem_len, np.int32)}
  _, metrics = jax.jit(task.train_step)(state._replace(task_state=memory), segment)
  assert abs(float(round_loss) - float(metrics["loss"])) < 1e-5
  # It is not the empty-memory loss: the memory changes the function measured.
  empty = jax.jit(lambda p, b: task.loss(p, b, None)[0])(
      state.params, {"inputs": batch["inputs"], "targets": batch["targets"]})
  assert abs(float(empty) - float(round_loss)) > 1e-3
  # The round's gradient treats the memory as training does: a constant.
  grad = jax.jit(jax.grad(loss_fn))(state.params, batch)
  step_grad = jax.jit(jax.grad(lambda p, m: task.loss(p, segment, m)[0]))(state.params, memory)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(step_grad)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_adamw_relaxation_time_is_one_over_lr_times_decay():
  config = text_transformerxl.get_config()
  optimizer = config.optimizer.to_dict()
  assert regime.optimizer_relaxation_time(optimizer) == pytest.approx(
      text_transformerxl.RELAXATION_STEPS)
  assert config.num_train_steps >= 10 * text_transformerxl.RELAXATION_STEPS
  # Decoupled decay penalises no objective: the rounds' objective is the loss itself.
  assert optim.objective_weight_decay(config) == 0.0
  sgd = dict(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  assert regime.optimizer_relaxation_time(sgd) == pytest.approx(2000)


def test_tiny_run_end_to_end(tmp_path):
  workdir = str(tmp_path / "text")
  run(workdir, config=CONFIG)
  table = rows(workdir)
  diag = [r for r in table if "full_loss" in r]
  assert [r["step"] for r in diag] == [0, 20, 40]
  for r in diag:
    assert np.isfinite(r["heldout_loss"]) and np.isfinite(r["grad_norm"])
  assert diag[-1]["full_loss"] < diag[0]["full_loss"] - 0.5
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["dataset"] == "pydoc_topics" and config["diagnostics"]["memory"] == "preceding"
  assert config["corpus"]["sha256"] == pydoc_text.corpus_record()["sha256"]
  assert config["model"]["activation"] == "gelu" and config["optimizer"]["name"] == "adamw"
