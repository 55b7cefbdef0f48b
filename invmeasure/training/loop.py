"""The training loop: sharded steps, diagnostic rounds, metric rows and checkpoints.

A run is a pure function of its config: the batch of step t and all randomness derive
from (seed, t), and everything else lives in the checkpointed `RunState`. Restarting the
same command after a kill resumes from the latest checkpoint (the newest that can be read:
`checkpoints.Checkpointer.restore_latest`), drops the metric rows written after it, and
produces the same rows and weights as an uninterrupted run. The workdir may be local or
`gs://...` (`storage`).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import signal
import sys
import threading
from concurrent import futures
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from invmeasure.analysis import figures
from invmeasure.training import (checkpoints, config_checks, metric_writer, projections,
                                 step as step_lib, storage, tasks)
from invmeasure.training.errors import TrainingError
from invmeasure.training.state import RunState, state_shardings


MAX_STEPS_IN_FLIGHT = 16


def _host(tree):
  """Values of replicated (possibly multi-process) arrays as numpy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _keep_rows_up_to(path: str, last_step: int) -> None:
  """Drops the rows a killed run wrote after its last checkpoint (all, if none)."""
  if not storage.path(path).exists():
    return
  rows = [r for r in metric_writer.read_metrics(path) if r["step"] <= last_step]
  storage.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step.

  With several processes, a SIGTERM reaches them at different steps, and a process that
  stopped alone would leave the others waiting in the next step's collectives. JAX's
  preemption service (started by `jax.distributed.initialize`, which catches SIGTERM)
  then names one step, after which every process saves and stops.
  """

  def __init__(self):
    self.requested = False
    self._shared = jax.process_count() > 1
    if not self._shared and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def after(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (called after every step)."""
    if self._shared and not self.requested:
      from jax.experimental import multihost_utils
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested


class _Batches:
  """Global batches of each step: the next step's read and placed on the devices on a
  thread while the current step runs."""

  def __init__(self, task: tasks.Task, sharding: NamedSharding):
    self._task, self._sharding = task, sharding
    self._pool = futures.ThreadPoolExecutor(1)
    self._pending: dict[int, futures.Future] = {}

  def _submit(self, step: int) -> futures.Future:
    return self._pool.submit(lambda: self._to_global(self._task.train_batch(step)))

  def train(self, step: int) -> dict:
    future = self._pending.pop(step, None) or self._submit(step)
    self._pending[step + 1] = self._submit(step + 1)
    return future.result()

  def diagnostic(self, step: int, num_minibatches: int, batch_size: int) -> list[dict]:
    """The fresh minibatches of the diagnostic round at `step`, one global batch each."""
    return [self._to_global(local) for local in
            self._task.diagnostic_batches(step, num_minibatches, batch_size)]

  def _to_global(self, local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(self._sharding, v)
            for k, v in local.items()}

  def close(self) -> None:
    """Lets a read in progress finish, then stops the task's data workers if it has any."""
    self._pool.shutdown(wait=True, cancel_futures=True)
    close_data = getattr(self._task, "close_data", None)
    if close_data is not None:
      close_data()


# XLA:CPU's default scheduler runs a chunk's independent gradients side by side and keeps
# each one's working memory; this one reuses it, and was no slower (docs/benchmarks.md).
_CPU_ROUND_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


class _DiagnosticRound:
  """Runs the jitted pieces of a diagnostic round: K gradients, then power iteration.

  Both go in chunks of one jitted call each, every chunk size compiled once: up to
  `minibatches_per_call` gradients (on CPU 8, which XLA runs side by side; elsewhere 1)
  and up to `power_iters_per_call` power iterations, whose HVPs share one gradient. With
  `tol` > 0 the power iteration stops after the chunk in which the eigenvalue's relative
  change fell below it (one host read per chunk); with 0 it runs `num_iters` without
  waiting. On CPU the pieces compile with XLA's memory-optimised scheduler, which keeps a
  chunk of 8 gradients within about 1.3-1.7 gradients' working memory (the default keeps
  5x: docs/benchmarks.md).
  """

  def __init__(self, fns: step_lib.DiagnosticFns, replicated: NamedSharding,
               num_iters: int, tol: float, minibatches_per_call: int | None = None,
               power_iters_per_call: int = 5):
    on_cpu = jax.default_backend() == "cpu"
    if minibatches_per_call is None:
      minibatches_per_call = 8 if on_cpu else 1
    self._per_call = minibatches_per_call
    options = _CPU_ROUND_OPTIONS if on_cpu else None
    jit = functools.partial(jax.jit, out_shardings=replicated, compiler_options=options)
    # Inputs arrive placed (the state as `Plan.state_sharding`, minibatches split over
    # 'data'); outputs are replicated so the next call and the checkpoint see one layout.
    self._init = jit(fns.init)
    # The accumulator is the round's own, so each chunk may overwrite its buffers.
    self._accumulate = jit(fns.accumulate, donate_argnums=1)
    full, last = divmod(num_iters, power_iters_per_call)
    self._power_chunks = [power_iters_per_call] * full + ([last] if last else [])
    self._power_step = {n: jit(functools.partial(fns.power_step, num_iters=n, tol=tol))
                        for n in set(self._power_chunks)}
    self._no_eigenvalue = jit(lambda acc: jnp.full_like(acc.sum_sq_dev, jnp.nan))
    self._summarize = jit(fns.summarize)
    self._tol = tol

  def gradient_stats(self, state: RunState, minibatches: list[dict]):
    """The gradient statistics accumulator after every minibatch, chunk by chunk."""
    acc = self._init(state)
    for start in range(0, len(minibatches), self._per_call):
      acc = self._accumulate(state, acc, tuple(minibatches[start:start + self._per_call]))
    return acc

  def __call__(self, state: RunState, minibatches: list[dict]) -> tuple[dict, object]:
    acc = self.gradient_stats(state, minibatches)
    first, vector = minibatches[0], state.sharpness_vector
    # Read only with tol > 0; any scalar of the eigenvalue's dtype stands in otherwise.
    previous = self._no_eigenvalue(acc) if self._tol > 0 else acc.sum_sq_dev
    done = 0
    for size in self._power_chunks:
      chunk = self._power_step[size](state, vector, previous, first)
      eigenvalue, vector, residual, previous = (chunk.eigenvalue, chunk.vector,
                                                chunk.residual, chunk.eigenvalue)
      if self._tol > 0:
        done += int(_host(chunk.num_iters))
        if bool(_host(chunk.converged)):
          break
      else:
        done += size
    row = _host(self._summarize(state, acc, first, minibatches[1], eigenvalue, residual))
    row["sharpness_iters"] = done
    return row, vector


class Plan(NamedTuple):
  """What a run is, derived from its config before any file is written."""
  task: tasks.Task
  schedule: optax.Schedule
  steps_per_epoch: int
  num_steps: int
  mesh: Mesh
  replicated: NamedSharding      # on every device: the state but its task_state, metrics
  batch_sharding: NamedSharding  # batches: examples (rows) split over the 'data' axis
  state_sharding: RunState       # a NamedSharding per leaf (`state.state_shardings`)


def make_plan(config: ml_collections.ConfigDict, abstract: bool = False) -> Plan:
  """Checks the config (ConfigError), opens the data and builds the task and device mesh.

  With `abstract` no data is read (`tasks.make_task`), for compiling ahead of time.
  """
  config_checks.check_config(config, jax.device_count())
  task = tasks.make_task(config, abstract)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  shardings = state_shardings(jax.eval_shape(task.init_run_state, init_key(config)), mesh)
  opt = task.optimization
  return Plan(task, opt.schedule, opt.steps_per_epoch, opt.num_steps, mesh,
              NamedSharding(mesh, P()), NamedSharding(mesh, P("data")), shardings)


def init_state_fn(plan: Plan):
  """Jitted `key -> RunState`, placed as `plan.state_sharding`."""
  return jax.jit(plan.task.init_run_state, out_shardings=plan.state_sharding)


def jit_train_step(plan: Plan):
  """The task's train step, jitted over the plan's mesh; the state's buffers are reused."""
  return jax.jit(plan.task.train_step, in_shardings=(plan.state_sharding, plan.batch_sharding),
                 out_shardings=(plan.state_sharding, plan.replicated), donate_argnums=0)


def init_key(config: ml_collections.ConfigDict) -> jax.Array:
  # RBG keys: threefry unrolls into a large program per parameter and compiles slowly.
  return jax.random.key(config.seed, impl="rbg")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains as `config` says, measuring the diagnostics; returns the last metric row."""
  config_checks.check_workdir(workdir)
  plan = make_plan(config)
  task, schedule, steps_per_epoch, num_steps = (plan.task, plan.schedule, plan.steps_per_epoch,
                                                plan.num_steps)
  replicated = plan.replicated

  # Everything above may reject the config; only now is anything written.
  storage.makedirs(workdir)
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, "config.json"),
                       config.to_json_best_effort(indent=2))

  state = init_state_fn(plan)(init_key(config))
  checkpointer = checkpoints.Checkpointer(workdir, int(config.get("checkpoint_max_to_keep", 2)))
  try:
    restored = checkpointer.restore_latest(state)
  except BaseException:
    checkpointer.close()
    raise
  state = restored if restored is not None else state
  start = int(_host(state.step))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  projections_path = os.path.join(workdir, projections.PROJECTIONS_FILE)
  if jax.process_index() == 0:
    for path in (metrics_path, projections_path):
      _keep_rows_up_to(path, start if restored is not None else -1)

  train_step = jit_train_step(plan)
  diag_cfg = config.diagnostics
  diagnostic_round = _DiagnosticRound(task.diagnostic_fns(), replicated,
                                      int(diag_cfg.sharpness_iters),
                                      float(diag_cfg.get("sharpness_tol", 0.0)))
  all_finite = jax.jit(
      lambda tree: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])),
      out_shardings=replicated)
  reset_sums = jax.jit(_reset_sums, static_argnums=1, out_shardings=plan.state_sharding,
                       donate_argnums=0)

  num_projections = int(diag_cfg.get("num_projections", 0))
  project_every = int(diag_cfg.get("projection_every_steps", 0)) if num_projections else 0
  if project_every:
    project = projections.projection_for(num_projections, config.seed, state.params,
                                         out_shardings=replicated)
  before_update = None  # the projection before the step that ends on a projection row
  # Projection rows wait on the device until the next metric row or checkpoint: reading
  # each back at once would stop asynchronous dispatch every few steps.
  pending_projections: list[tuple[int, jax.Array, jax.Array | None]] = []
  in_flight: collections.deque = collections.deque()

  batches = _Batches(task, plan.batch_sharding)
  writer = metric_writer.MetricWriter(metrics_path) if jax.process_index() == 0 else None
  projection_writer = (metric_writer.MetricWriter(projections_path)
                       if project_every and jax.process_index() == 0 else None)
  tensorboard = _tensorboard(workdir)
  preemption = _Preemption()
  progress = _progress(start, num_steps)
  last_row: dict = {}

  def measure(state: RunState, done: int) -> tuple[RunState, dict]:
    minibatches = batches.diagnostic(done, int(diag_cfg.num_minibatches),
                                     int(diag_cfg.get("batch_size") or config.batch_size))
    row, vector = diagnostic_round(state, minibatches)
    return state._replace(sharpness_vector=vector), row

  def emit(row: dict, done: int) -> None:
    nonlocal last_row
    row = {"step": done, "epoch": done / steps_per_epoch,
           "lr": float(schedule(max(done - 1, 0))), **row}
    row = {k: v.item() if isinstance(v, np.ndarray) else v for k, v in row.items()}
    bad = [k for k, v in row.items() if isinstance(v, float) and k.endswith("loss")
           and not math.isfinite(v)]
    if bad:
      raise TrainingError(
          f"non-finite {bad[0]}={row[bad[0]]} at step {done}; stopped. The last good "
          f"checkpoint (step {checkpointer.latest_step()}) is kept in "
          f"{workdir}/checkpoints; lower config.optimizer.learning_rate and rerun")
    if writer:
      writer.write(row)
    if tensorboard:
      for name, value in row.items():
        if name not in ("step", "epoch") and isinstance(value, (int, float)):
          tensorboard.add_scalar(name, value, done)
    last_row = row

  def record_projection(state: RunState, done: int) -> None:
    pending_projections.append((done, project(state.params), before_update))

  def write_projections() -> None:
    for done, weights, before in pending_projections:
      row = {"step": done, "weights": _host(weights)}
      if before is not None:
        row["update"] = row["weights"] - _host(before)
      if projection_writer:
        projection_writer.write(row)
    pending_projections.clear()

  try:
    if start == 0 and project_every:
      record_projection(state, 0)
    if start == 0 and diag_cfg.every_steps:
      state, row = measure(state, 0)
      emit(row, 0)
    for step in range(start, num_steps):
      if project_every and (step + 1) % project_every == 0:
        before_update = project(state.params)  # read back only with the row
      state, step_metrics = train_step(state, batches.train(step))
      # At most MAX_STEPS_IN_FLIGHT steps queued ahead of the host: XLA:CPU's simulated
      # devices can deadlock in an all-reduce with ~40 sharded steps queued.
      in_flight.append(step_metrics["loss"])
      if len(in_flight) > MAX_STEPS_IN_FLIGHT:
        in_flight.popleft().block_until_ready()
      done = step + 1
      if project_every and done % project_every == 0:
        record_projection(state, done)
      row = {}
      if done % config.log_every_steps == 0 or done == num_steps:
        sums = _host(state.sums)
        row["train_loss"] = float(sums["log_loss"] / sums["log_count"])
        # Per-step quantities (config.diagnostics.per_step), averaged over the interval.
        row.update({k[len("log_"):]: float(v / sums["log_count"]) for k, v in sums.items()
                    if k.startswith("log_step_")})
        state = reset_sums(state, "log")
      if done % steps_per_epoch == 0:
        sums = _host(state.sums)
        row["epoch_avg_train_loss"] = float(sums["epoch_loss"] / sums["epoch_count"])
        state = reset_sums(state, "epoch")
      epoch_end_round = done % steps_per_epoch == 0 and diag_cfg.get("at_epoch_end", False)
      if diag_cfg.every_steps and (done % diag_cfg.every_steps == 0 or epoch_end_round
                                   or done == num_steps):
        state, measured = measure(state, done)
        row.update(measured)
      if row:
        write_projections()
        emit(row, done)
        if progress is not None:
          progress.set_postfix(loss=f"{row.get('train_loss', float('nan')):.4f}", refresh=False)
      preempted = preemption.after(done)
      if done % config.checkpoint_every_steps == 0 or done == num_steps or preempted:
        if not bool(_host(all_finite(state.params))):
          raise TrainingError(
              f"non-finite weights at step {done}; stopped without saving them. The last "
              f"good checkpoint (step {checkpointer.latest_step()}) is kept; lower "
              "config.optimizer.learning_rate and rerun")
        write_projections()  # every row up to a checkpoint is on disk before it
        for open_writer in (writer, projection_writer):
          if open_writer:
            open_writer.flush()  # on object storage, rows are uploaded only here
        checkpointer.save(state, done)
      if progress is not None:
        progress.update(1)
      if preempted:
        checkpointer.wait()
        raise TrainingError(f"preempted (SIGTERM) after step {done}; checkpoint saved; "
                            "rerun the same command to resume")
  finally:
    checkpointer.close()
    batches.close()
    for open_writer in (writer, projection_writer):
      if open_writer:
        open_writer.close()
    if tensorboard:
      tensorboard.close()
    if progress is not None:
      progress.close()
  if jax.process_index() == 0:
    figures.write_figures([workdir], os.path.join(workdir, "figures"))
  return last_row


def _reset_sums(state: RunState, which: str) -> RunState:
  """Zeroes the sums of one interval ('log' or 'epoch'): every `<which>_...` entry."""
  sums = {k: jnp.zeros_like(v) if k.startswith(f"{which}_") else v
          for k, v in state.sums.items()}
  return state._replace(sums=sums)


def _tensorboard(workdir: str):
  """TensorBoard event files in workdir/tensorboard (process 0 only)."""
  if jax.process_index() != 0:
    return None
  return storage.tensorboard_writer(os.path.join(workdir, "tensorboard"), flush_secs=30)


def _progress(start: int, total: int):
  if jax.process_index() != 0:
    return None
  import tqdm
  return tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                   file=sys.stderr, mininterval=1.0)
