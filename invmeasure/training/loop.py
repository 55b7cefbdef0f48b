"""The training loop: sharded steps, diagnostic rounds, metric rows and checkpoints.

A run is a pure function of its config: the batch of step t and all randomness derive
from (seed, t), and everything else lives in the checkpointed `RunState`. Restarting the
same command after a kill resumes from the latest checkpoint (the newest that can be read:
`checkpoints.Checkpointer.restore_latest`), drops the metric rows written after it, and
produces the same rows and weights as an uninterrupted run. The workdir may be local or
`gs://...` (`storage`).

`train_and_evaluate` runs in phases, each a named function here or a module of its own:
the plan (`make_plan`: the config checked, data opened, nothing written), the workdir's
lock (`run_lock`), the config compared with the recorded one (`provenance`), the restore
(`restore`), the step loop (`_step_loop`, its jitted pieces in `_Steps`), and the outputs
(`outputs`: rows, projections, TensorBoard, the progress bar). Figures are drawn by the
entry points, from the rows (`invmeasure.analysis.figures`).
"""

from __future__ import annotations

import collections
import contextlib
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

from invmeasure.errors import ConfigError, TrainingError
from invmeasure.training import (checkpoints, config_checks, metric_writer,
                                 outputs as outputs_lib, projections, provenance, run_lock,
                                 step as step_lib, storage, tasks)
from invmeasure.training.state import RunState, state_shardings


MAX_STEPS_IN_FLIGHT = 16


_host = outputs_lib.host


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


def train_step_fn(plan: Plan):
  """The task's train step, traced under the plan's mesh: the per-example instruments
  inside it take the whole batch on every device (`diagnostics.per_example`: XLA
  partitions their convolution gradients wrongly over a sharded batch)."""
  def train_step(state, batch):
    with jax.sharding.use_abstract_mesh(plan.mesh.abstract_mesh):
      return plan.task.train_step(state, batch)
  return train_step


def jit_train_step(plan: Plan):
  """`train_step_fn` jitted over the plan's mesh; the state's buffers are reused."""
  return jax.jit(train_step_fn(plan), in_shardings=(plan.state_sharding, plan.batch_sharding),
                 out_shardings=(plan.state_sharding, plan.replicated), donate_argnums=0)


def init_key(config: ml_collections.ConfigDict) -> jax.Array:
  # RBG keys: threefry unrolls into a large program per parameter and compiles slowly.
  return jax.random.key(config.seed, impl="rbg")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       accept_config_change: bool = False) -> dict:
  """Trains as `config` says, measuring the diagnostics; returns the last metric row.

  A run already finished trains nothing and returns its last row. Raises `ConfigError`
  before writing anything for a bad config, a workdir another run holds, or a resumed run
  whose config changed in fields that may not change (`provenance`) unless
  `accept_config_change`; `TrainingError` for a run that cannot go on (what is kept is said).
  """
  config_checks.check_workdir(workdir)
  plan = make_plan(config)  # may reject the config; nothing is written before it
  storage.makedirs(workdir)
  lock = _agreed(lambda: _lock(workdir))  # process 0 holds it for all
  try:
    changes = _agreed(lambda: provenance.check(workdir, config, accept_config_change))
    state, start, checkpointer = restore(plan, config, workdir)
    try:
      with _io_errors(workdir, checkpointer):
        if jax.process_index() == 0:
          provenance.record(workdir, config, changes or {}, start)
        if start >= plan.num_steps:
          return _finished(workdir, start)
        return _step_loop(config, plan, workdir, state, start, checkpointer)
    finally:
      checkpointer.close()
  finally:
    if lock is not None:
      lock.release()


def _lock(workdir: str) -> run_lock.WorkdirLock:
  lock = run_lock.WorkdirLock(workdir)
  lock.acquire()
  return lock


def _agreed(decide):
  """`decide()` on process 0, whose verdict every process follows: a `ConfigError` there
  stops them all (the others with a line pointing to it). Returns its result on process 0,
  None elsewhere."""
  result, error = None, None
  if jax.process_index() == 0:
    try:
      result = decide()
    except ConfigError as e:
      error = e
  if not checkpoints.all_processes(error is None):
    raise error or ConfigError("process 0 refused to start the run; its output says why")
  return result


def restore(plan: Plan, config: ml_collections.ConfigDict, workdir: str
            ) -> tuple[RunState, int, checkpoints.Checkpointer]:
  """(state, first step, checkpointer): the newest readable checkpoint's state, or a new
  one; the rows a killed run wrote after that checkpoint are dropped."""
  state = init_state_fn(plan)(init_key(config))
  checkpointer = checkpoints.Checkpointer(workdir, int(config.get("checkpoint_max_to_keep", 2)))
  try:
    restored = checkpointer.restore_latest(state)
    start = int(_host(restored.step)) if restored is not None else 0
    if jax.process_index() == 0:
      for name in (outputs_lib.METRICS_FILE, projections.PROJECTIONS_FILE):
        _keep_rows_up_to(os.path.join(workdir, name), start if restored is not None else -1)
  except BaseException:
    checkpointer.close()
    raise
  return (restored if restored is not None else state), start, checkpointer


def _finished(workdir: str, step: int) -> dict:
  """The last row of a run that has nothing left to train, which says so."""
  path = os.path.join(workdir, outputs_lib.METRICS_FILE)
  rows = metric_writer.read_metrics(path) if storage.path(path).exists() else []
  if jax.process_index() == 0:
    print(f"{workdir} is already finished at step {step}; nothing to train", file=sys.stderr,
          flush=True)
  return rows[-1] if rows else {"step": step}


@contextlib.contextmanager
def _io_errors(workdir: str, checkpointer: checkpoints.Checkpointer):
  """An `OSError` of any write (a full disk, a permission) as one line saying what is safe."""
  try:
    yield
  except OSError as error:
    saved = checkpointer.latest_step()
    safe = (f"rows and checkpoint up to step {saved} are safe in {workdir}"
            if saved is not None else f"no checkpoint was saved yet in {workdir}")
    raise TrainingError(f"cannot write {error.filename or workdir}: "
                        f"{error.strerror or error}; {safe}; free space or fix the "
                        "permissions, then rerun the same command to resume") from error


def _step_loop(config: ml_collections.ConfigDict, plan: Plan, workdir: str, state: RunState,
               start: int, checkpointer: checkpoints.Checkpointer) -> dict:
  """Steps from `start` to the plan's last step, writing rows and checkpoints on their
  cadences; returns the last row."""
  steps = _Steps(config, plan, state)
  batches = _Batches(plan.task, plan.batch_sharding)
  out = outputs_lib.Outputs(workdir, start, plan.num_steps, steps.project_every > 0)
  preemption = _Preemption()
  try:
    if start == 0:
      state = steps.first_rows(state, batches, out)
    for step in range(start, plan.num_steps):
      state = steps.train(state, step, batches, out)
      done = step + 1
      state, row = steps.rows(state, done, batches)
      if row:
        out.row(_complete(row, done, plan, checkpointer, workdir))
      preempted = preemption.after(done)
      if (done % config.checkpoint_every_steps == 0 or done == plan.num_steps
          or preempted):
        _checkpoint(state, done, steps, out, checkpointer)
      out.advance()
      if preempted:
        checkpointer.wait()
        raise TrainingError(f"preempted (SIGTERM) after step {done}; checkpoint saved; "
                            "rerun the same command to resume")
  finally:
    batches.close()
    out.close()
  return out.last_row


class _Steps:
  """The jitted pieces of the step loop and what they keep between steps."""

  def __init__(self, config: ml_collections.ConfigDict, plan: Plan, state: RunState):
    self.config, self.plan, self.diag = config, plan, config.diagnostics
    self._train_step = jit_train_step(plan)
    self._round = _DiagnosticRound(plan.task.diagnostic_fns(), plan.replicated,
                                   int(self.diag.sharpness_iters),
                                   float(self.diag.get("sharpness_tol", 0.0)))
    self.all_finite = jax.jit(
        lambda tree: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                        for x in jax.tree.leaves(tree)])),
        out_shardings=plan.replicated)
    self._reset_sums = jax.jit(_reset_sums, static_argnums=1,
                               out_shardings=plan.state_sharding, donate_argnums=0)
    num_projections = int(self.diag.get("num_projections", 0))
    self.project_every = (int(self.diag.get("projection_every_steps", 0))
                          if num_projections else 0)
    if self.project_every:
      self._project = projections.projection_for(num_projections, config.seed, state.params,
                                                 out_shardings=plan.replicated)
    self._before_update = None  # the projection before the step that ends on a projection
    self._in_flight: collections.deque = collections.deque()

  def first_rows(self, state: RunState, batches: _Batches,
                 out: outputs_lib.Outputs) -> RunState:
    """The rows of step 0, before any training: a projection and a diagnostic round."""
    if self.project_every:
      out.projection(0, self._project(state.params), None)
    if self.diag.every_steps:
      state, row = self._measure(state, 0, batches)
      out.row(_complete(row, 0, self.plan, None, None))
    return state

  def train(self, state: RunState, step: int, batches: _Batches,
            out: outputs_lib.Outputs) -> RunState:
    """One optimizer step (and the projections around it)."""
    if self.project_every and (step + 1) % self.project_every == 0:
      self._before_update = self._project(state.params)  # read back only with the row
    state, step_metrics = self._train_step(state, batches.train(step))
    # At most MAX_STEPS_IN_FLIGHT steps queued ahead of the host: XLA:CPU's simulated
    # devices can deadlock in an all-reduce with ~40 sharded steps queued.
    self._in_flight.append(step_metrics["loss"])
    if len(self._in_flight) > MAX_STEPS_IN_FLIGHT:
      self._in_flight.popleft().block_until_ready()
    if self.project_every and (step + 1) % self.project_every == 0:
      out.projection(step + 1, self._project(state.params), self._before_update)
    return state

  def rows(self, state: RunState, done: int, batches: _Batches) -> tuple[RunState, dict]:
    """The row due after `done` steps ({} when none): the training loss and per-step
    quantities of the log interval, the epoch's mean loss, a diagnostic round."""
    row, last = {}, done == self.plan.num_steps
    if done % self.config.log_every_steps == 0 or last:
      sums = _host(state.sums)
      row["train_loss"] = float(sums["log_loss"] / sums["log_count"])
      # Per-step quantities (config.diagnostics.per_step), averaged over the interval.
      row.update({k[len("log_"):]: float(v / sums["log_count"]) for k, v in sums.items()
                  if k.startswith("log_step_")})
      state = self._reset_sums(state, "log")
    epoch_end = done % self.plan.steps_per_epoch == 0
    if epoch_end:
      sums = _host(state.sums)
      row["epoch_avg_train_loss"] = float(sums["epoch_loss"] / sums["epoch_count"])
      state = self._reset_sums(state, "epoch")
    if self.diag.every_steps and (done % self.diag.every_steps == 0 or last or (
        epoch_end and self.diag.get("at_epoch_end", False))):
      state, measured = self._measure(state, done, batches)
      row.update(measured)
    return state, row

  def _measure(self, state: RunState, done: int, batches: _Batches) -> tuple[RunState, dict]:
    minibatches = batches.diagnostic(done, int(self.diag.num_minibatches),
                                     int(self.diag.get("batch_size") or self.config.batch_size))
    row, vector = self._round(state, minibatches)
    return state._replace(sharpness_vector=vector), row


def _complete(row: dict, done: int, plan: Plan, checkpointer, workdir) -> dict:
  """`row` with its step, epoch and learning rate, as plain numbers; a non-finite loss
  stops the run (`TrainingError`)."""
  row = {"step": done, "epoch": done / plan.steps_per_epoch,
         "lr": float(plan.schedule(max(done - 1, 0))), **row}
  row = {k: v.item() if isinstance(v, np.ndarray) else v for k, v in row.items()}
  bad = [k for k, v in row.items() if isinstance(v, float) and k.endswith("loss")
         and not math.isfinite(v)]
  if bad:
    kept = checkpointer.latest_step() if checkpointer else None
    raise TrainingError(
        f"non-finite {bad[0]}={row[bad[0]]} at step {done}; stopped. The last good "
        f"checkpoint (step {kept}) is kept in {workdir}/checkpoints; lower "
        "config.optimizer.learning_rate and rerun")
  return row


def _checkpoint(state: RunState, done: int, steps: _Steps, out: outputs_lib.Outputs,
                checkpointer: checkpoints.Checkpointer) -> None:
  """Saves `state` after every row up to it is durable; non-finite weights are not saved."""
  if not bool(_host(steps.all_finite(state.params))):
    raise TrainingError(
        f"non-finite weights at step {done}; stopped without saving them. The last "
        f"good checkpoint (step {checkpointer.latest_step()}) is kept; lower "
        "config.optimizer.learning_rate and rerun")
  out.flush()  # on object storage, rows are uploaded only here
  checkpointer.save(state, done)


def _reset_sums(state: RunState, which: str) -> RunState:
  """Zeroes the sums of one interval ('log' or 'epoch'): every `<which>_...` entry."""
  sums = {k: jnp.zeros_like(v) if k.startswith(f"{which}_") else v
          for k, v in state.sums.items()}
  return state._replace(sums=sums)
