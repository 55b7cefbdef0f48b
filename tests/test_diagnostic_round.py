"""The driver's diagnostic round in chunks (several minibatches and power iterations per
jitted call) measures what one minibatch and one iteration per call measure, and
compiles nothing after its first round."""

import jax
import numpy as np
import pytest

import configs.quickstart as quickstart
from invmeasure.training import loop

# 11 minibatches make chunks of 8 and 3; 7 power iterations chunks of 5 and 2.
K, ITERS = 11, 7


@pytest.fixture(scope="module")
def setup():
  config = quickstart.get_config("tiny")
  plan = loop.make_plan(config)
  state = loop.init_state_fn(plan)(loop.init_key(config))
  batches = loop._Batches(plan.task, plan.batch_sharding)
  rounds = [batches.diagnostic(step, K, config.batch_size) for step in (0, 4, 8)]
  batches.close()
  return plan, state, rounds


def _round(plan, tol, **chunks):
  return loop._DiagnosticRound(plan.task.diagnostic_fns(), plan.replicated, ITERS, tol,
                               **chunks)


@pytest.mark.parametrize("tol", [0.0, 0.05])
def test_chunks_measure_what_single_calls_measure(setup, tol):
  plan, state, rounds = setup
  chunked = _round(plan, tol, minibatches_per_call=8, power_iters_per_call=5)
  single = _round(plan, tol, minibatches_per_call=1, power_iters_per_call=1)
  for minibatches in rounds[:2]:
    row_c, vector_c = chunked(state, minibatches)
    row_s, vector_s = single(state, minibatches)
    assert row_c.keys() == row_s.keys()
    assert row_c["sharpness_iters"] == row_s["sharpness_iters"]
    if tol == 0.0:
      assert row_c["sharpness_iters"] == ITERS
    for key in row_c:
      np.testing.assert_allclose(row_c[key], row_s[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for a, b in zip(jax.tree.leaves(vector_c), jax.tree.leaves(vector_s)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    state = state._replace(sharpness_vector=vector_c)


def test_no_compilation_after_the_first_round(setup):
  plan, state, rounds = setup
  lowerings = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: lowerings.append(event)
      if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" else None)
  the_round = _round(plan, 0.05)
  counts = []
  for minibatches in rounds:
    before = len(lowerings)
    row, vector = the_round(state, minibatches)
    state = state._replace(sharpness_vector=vector)
    counts.append(len(lowerings) - before)
  assert counts[0] > 0 and counts[1:] == [0, 0], counts
