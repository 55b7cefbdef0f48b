"""Running `experiments.run` in subprocesses and comparing what runs wrote, for the driver
tests (test_training.py, test_language_model_training.py)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from invmeasure.training import loop, metric_writer

# The runs inherit XLA_FLAGS from tests/conftest.py (8 simulated devices, fast codegen).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = "configs/quickstart.py:tiny"


def command(workdir, *overrides, config=QUICKSTART):
  return [sys.executable, "-m", "experiments.run", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def run(workdir, *overrides, env=None, check=True, **kwargs):
  result = subprocess.run(command(workdir, *overrides, **kwargs), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def plan_and_state(config):
  """The run's plan and its state at step 0, built in this process."""
  plan = loop.make_plan(config)
  return plan, loop.init_state_fn(plan)(loop.init_key(config))


def replayed_step_metrics(config, num_steps: int) -> list[dict[str, float]]:
  """The jitted train step's metrics for steps 0 .. num_steps - 1 from a fresh state,
  replayed here to check what a run's rows averaged."""
  plan, state = plan_and_state(config)
  train_step = loop.jit_train_step(plan)
  metrics_by_step = []
  for step in range(num_steps):
    state, metrics = train_step(state, jax.device_put(plan.task.train_batch(step),
                                                      plan.batch_sharding))
    metrics_by_step.append({k: float(v) for k, v in metrics.items()})
  return metrics_by_step


def rows(workdir):
  return metric_writer.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def projection_rows(workdir):
  return metric_writer.read_metrics(os.path.join(workdir, "projections.jsonl"))


def final_params(workdir):
  """(step, the whole saved run state) of the latest checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  with ocp.CheckpointManager(directory) as manager:
    restored = manager.restore(step, args=ocp.args.StandardRestore())
  return step, restored


def flatten(tree, prefix=""):
  """{path: leaf} of nested dicts, lists and tuples."""
  if isinstance(tree, (dict, list, tuple)):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = {}
    for key, value in items:
      out.update(flatten(value, f"{prefix}/{key}"))
    return out
  return {prefix: tree}


def assert_same_params(a, b):
  leaves_a, leaves_b = (sorted(flatten(x).items()) for x in (a, b))
  assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
  for (name, x), (_, y) in zip(leaves_a, leaves_b):
    assert np.array_equal(np.asarray(x), np.asarray(y)), name


def assert_same_run(workdir, reference, final_step):
  """The run in `workdir` wrote exactly what `reference` did: rows, projection rows, and
  its last checkpoint (at `final_step` in both) bit for bit."""
  assert rows(workdir) == rows(reference)
  assert projection_rows(workdir) == projection_rows(reference)
  step, params = final_params(workdir)
  ref_step, ref_params = final_params(reference)
  assert step == ref_step == final_step
  assert_same_params(params, ref_params)


def assert_rows_close(a, b, rtol=2e-4):
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for key in ra:
      np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-6,
                                 err_msg=f"{key} at step {ra['step']}")


def kill_when(process, workdir, min_step):
  """SIGKILLs `process` once its metric rows reach `min_step` (or it ends)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(path):
      done = [r["step"] for r in metric_writer.read_metrics(path)]
      if done and done[-1] >= min_step:
        break
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)
  process.wait()
