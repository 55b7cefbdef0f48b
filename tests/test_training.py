"""The training driver end to end: rows, exact resume after SIGKILL (the killed run's lock
taken over), a second run on the same workdir refused, SIGTERM, devices, processes,
divergence and bad input."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from invmeasure.training import run_lock
from tests.driver import (REPO, assert_rows_close, assert_same_run, command, final_params,
                          flatten, kill_when, projection_rows, rows, run)

# A run long enough to be killed in the middle: 120 steps, rows every 2 steps.
LONG = ["--config.num_train_steps=120", "--config.checkpoint_every_steps=20",
        "--config.diagnostics.every_steps=10"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run of the LONG tiny config."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  run(workdir, *LONG)
  return workdir


def test_rows_follow_the_metrics_contract(reference):
  table = rows(reference)
  assert table[0]["step"] == 0 and "grad_norm" in table[0] and "train_loss" not in table[0]
  steps = [r["step"] for r in table]
  assert steps == sorted(set(steps)), "rows are ordered and never duplicated"
  train_rows = [r for r in table if "train_loss" in r]
  assert [r["step"] for r in train_rows] == list(range(2, 121, 2))
  diag_rows = [r for r in table if "grad_norm" in r]
  # Every 10 steps, and at each epoch's end (46 steps: 1500 digits // 32).
  assert [r["step"] for r in diag_rows] == sorted(set(range(0, 121, 10)) | {46, 92})
  for r in diag_rows:
    for field in ("full_loss", "grad_norm", "objective_grad_norm", "noise_norm", "sharpness",
                  "update_sharpness", "weight_norm", "distance_from_init", "lr", "epoch"):
      assert np.isfinite(r[field]), field
  # Epochs are optimizer steps over steps per epoch (1500 digits // 32 = 46).
  assert all(abs(r["epoch"] - r["step"] / 46) < 1e-12 for r in table)
  assert any("epoch_avg_train_loss" in r for r in table)
  config = json.load(open(os.path.join(reference, "config.json")))
  assert config["num_train_steps"] == 120 and config["dataset"] == "digits"
  assert os.listdir(os.path.join(reference, "tensorboard"))
  # Projections every 3 steps (the tiny config), the update's from step 3 on.
  projected = projection_rows(reference)
  assert [r["step"] for r in projected] == list(range(0, 121, 3))
  assert "update" not in projected[0] and all(len(r["update"]) == 8 for r in projected[1:])


def test_sigkill_at_any_moment_then_resume_gives_identical_rows_and_weights(reference, tmp_path):
  workdir = str(tmp_path / "killed")
  rng = np.random.default_rng()
  for min_step in sorted(rng.integers(4, 110, size=2)):
    process = subprocess.Popen(command(workdir, *LONG), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    kill_when(process, workdir, int(min_step))
  # The killed run's lock names a process that is gone: the rerun takes it over.
  notices = [line for line in run(workdir, *LONG).stderr.splitlines()
             if line.startswith("notice: took over the stale lock")]
  assert len(notices) == 1 and f"of pid {process.pid} on host" in notices[0], notices
  assert not os.path.exists(os.path.join(workdir, run_lock.LOCK_FILE))
  assert_same_run(workdir, reference, 120)


def test_a_second_run_is_refused_while_the_first_finishes_untouched(reference, tmp_path):
  workdir = str(tmp_path / "shared")
  first = subprocess.Popen(command(workdir, *LONG), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  lock = os.path.join(workdir, run_lock.LOCK_FILE)
  while first.poll() is None and not os.path.exists(lock):
    time.sleep(0.005)
  first.send_signal(signal.SIGSTOP)  # alive and holding the lock while the second tries
  try:
    second = subprocess.run(command(workdir, *LONG), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
  finally:
    first.send_signal(signal.SIGCONT)
  _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-3000:]
  assert second.returncode == 1
  (line,) = second.stderr.strip().splitlines()
  assert re.fullmatch(
      rf"error: --workdir={workdir} is in use by another run \(pid {first.pid} on host "
      rf"{re.escape(socket.gethostname())}, started \S+; {lock}\); wait for it to end, or use "
      r"another --workdir", line), line
  assert_same_run(workdir, reference, 120)
  assert not os.path.exists(lock)


def test_sigterm_saves_a_checkpoint_and_the_rerun_continues(reference, tmp_path):
  workdir = str(tmp_path / "preempted")
  process = subprocess.Popen(command(workdir, *LONG), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  path = os.path.join(workdir, "metrics.jsonl")
  while process.poll() is None and not (os.path.exists(path) and len(rows(workdir)) >= 8):
    time.sleep(0.005)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  if process.returncode != 0:  # it was still training when the signal came
    assert "preempted (SIGTERM)" in stderr and "Traceback" not in stderr
    # The step it stopped after may be one without a row (rows come every 2 steps).
    saved = int(re.search(r"preempted \(SIGTERM\) after step (\d+)", stderr).group(1))
    assert saved >= rows(workdir)[-1]["step"]
    assert str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))
  run(workdir, *LONG)
  assert rows(workdir) == rows(reference)
  assert projection_rows(workdir) == projection_rows(reference)


def test_one_device_matches_eight(reference, tmp_path):
  one_env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  run(str(tmp_path / "one"), *LONG, env=one_env)
  assert_rows_close(rows(str(tmp_path / "one")), rows(reference))


def _run_together(commands_and_envs):
  """Starts the processes of one job at once and waits for all; each must succeed."""
  procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for cmd, env in commands_and_envs]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]


def test_two_processes_of_four_devices_match_one_process_of_eight(reference, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  workdir = str(tmp_path / "two")
  port = 20000 + int(np.random.default_rng().integers(10000))
  flags = [f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  _run_together([(command(workdir, *LONG, *flags, f"--process_id={i}"), env) for i in range(2)])
  assert_rows_close(rows(workdir), rows(reference))


def test_distributed_auto_joins_the_job_a_slurm_environment_describes(reference, tmp_path):
  """`--distributed_auto` as docs/pods.md starts it under SLURM: two tasks on one node,
  each told its place only by the variables `srun` sets."""
  job = int(np.random.default_rng().integers(1, 10**6))  # JAX derives the port from it
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
         "SLURM_STEP_NUM_NODES": "1", "TPU_SKIP_MDS_QUERY": "1"}
  workdir = str(tmp_path / "slurm")
  _run_together([(command(workdir, *LONG, "--distributed_auto"),
                  {**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}) for i in range(2)])
  assert_rows_close(rows(workdir), rows(reference))
  # One job, not two separate runs: the second process wrote its part of the checkpoint.
  assert "ocdbt.process_1" in os.listdir(os.path.join(workdir, "checkpoints", "120", "default"))
  # Both processes follow process 0's verdict on a changed config, before anything runs.
  changed = [(command(workdir, *LONG, "--config.seed=7", "--distributed_auto"),
              {**env, "SLURM_JOB_ID": str(job + 1), "SLURM_PROCID": str(i),
               "SLURM_LOCALID": str(i)}) for i in range(2)]
  procs = [subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for cmd, e in changed]
  errors = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [1, 1], errors
  assert "error: --workdir=" in errors[0] and "(seed: 0 -> 7)" in errors[0], errors[0]
  assert "error: process 0 refused to start the run" in errors[1], errors[1]


def test_sigterm_to_one_process_of_two_stops_both_after_the_same_step(reference, tmp_path):
  """A pod preemption: the signal reaches the processes at different steps; they agree on
  one, both save it and stop, and the same commands resume."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  workdir = str(tmp_path / "preempted")
  port = 20000 + int(np.random.default_rng().integers(10000))
  flags = [f"--coordinator_address=localhost:{port}", "--num_processes=2"]

  def start():
    return [subprocess.Popen(command(workdir, *LONG, *flags, f"--process_id={i}"), cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]

  procs = start()
  path = os.path.join(workdir, "metrics.jsonl")
  while procs[0].poll() is None and not (os.path.exists(path) and len(rows(workdir)) >= 8):
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300) for p in procs]
  if procs[0].returncode != 0:  # it was still training when the signal came
    stopped = [re.search(r"preempted \(SIGTERM\) after step (\d+)", err) for _, err in outputs]
    assert all(stopped) and all(p.returncode == 1 for p in procs), outputs[0][1][-3000:]
    assert stopped[0].group(1) == stopped[1].group(1)
    assert stopped[0].group(1) in os.listdir(os.path.join(workdir, "checkpoints"))
  procs = start()
  for p, (_, err) in zip(procs, [p.communicate(timeout=300) for p in procs]):
    assert p.returncode == 0, err[-3000:]
  assert_rows_close(rows(workdir), rows(reference))


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "diverged")
  result = run(workdir, "--config.optimizer.learning_rate=1e4", check=False)
  assert result.returncode == 1
  assert "non-finite" in result.stderr and "Traceback" not in result.stderr
  kept = os.listdir(os.path.join(workdir, "checkpoints"))
  for name in kept:
    if name.isdigit():
      step, params = final_params(workdir)
      floats = [np.asarray(v) for v in flatten(params).values()
                if np.issubdtype(np.asarray(v).dtype, np.floating)]
      assert floats and all(np.isfinite(v).all() for v in floats)


@pytest.mark.parametrize("override,expected", [
    ("--config.dataset=mnist", "config.dataset='mnist' is unknown"),
    ("--config.model.name=vgg", "config.model.name='vgg' is unknown"),
    ("--config.optimizer.name=lbfgs", "config.optimizer.name='lbfgs' is unknown"),
    ("--config.schedule.name=linear", "config.schedule.name='linear' is unknown"),
    ("--config.optimizer.learning_rate=-0.1", "config.optimizer.learning_rate=-0.1 must be a positive"),
    ("--config.batch_size=-4", "config.batch_size=-4 must be a positive integer"),
    ("--config.batch_size=12", "config.batch_size=12 does not split over 8 devices"),
    ("--config.train_examples=5000", "config.train_examples=5000 exceeds the 1500 training"),
    ("--config.train_examples=-3", "config.train_examples=-3 must be a positive integer"),
    ("--config.diagnostics.num_projections=-1",
     "config.diagnostics.num_projections=-1 must be a positive integer"),
    ("--config.checkpoint_max_to_keep=0", "config.checkpoint_max_to_keep=0 must be a positive"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, override, expected):
  from invmeasure.training import loop
  from invmeasure.errors import ConfigError
  import configs.quickstart as quickstart
  config = quickstart.get_config("tiny")
  field, value = override[len("--config."):].split("=")
  target = config
  *parents, leaf = field.split(".")
  for parent in parents:
    target = target[parent]
  target[leaf] = type(target[leaf])(value) if not isinstance(target[leaf], str) else value
  workdir = str(tmp_path / "never")
  with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")) as info:
    loop.train_and_evaluate(config, workdir)
  assert "\n" not in str(info.value)
  assert not os.path.exists(workdir)


def test_bad_input_from_the_command_line_prints_one_line(tmp_path):
  result = run(str(tmp_path / "never"), "--config.optimizer.name=lbfgs", check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.optimizer.name")
  assert "Traceback" not in result.stderr
  afile = tmp_path / "afile"
  afile.write_text("x")
  result = run(str(afile), check=False)
  assert result.returncode == 1 and "is an existing file" in result.stderr
  assert "Traceback" not in result.stderr


def test_no_recompilation_after_the_first_step_and_round(tmp_path):
  """A longer run lowers exactly the programs a shorter one does: nothing per step.

  The first run also lowers the eager operations it is the first to use, so the
  comparison is between the second and third runs.
  """
  import jax
  from invmeasure.training import loop
  import configs.quickstart as quickstart
  lowerings = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: lowerings.append(event)
      if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" else None)
  counts = []
  for steps in (8, 16, 40):
    config = quickstart.get_config("tiny")
    config.num_train_steps = steps
    before = len(lowerings)
    loop.train_and_evaluate(config, str(tmp_path / f"run{steps}"))
    counts.append(len(lowerings) - before)
  assert counts[1] == counts[2], counts
