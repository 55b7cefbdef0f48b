"""Checkpoints of the run state with orbax, and resuming from the newest readable one.

Each checkpoint records a fingerprint of every leaf of the state (in orbax's step
metadata), checked when it is restored: TensorStore checksums its index, but not the
array data of large leaves, so flipped bytes there would otherwise come back as other
weights without an error.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from invmeasure.training import storage
from invmeasure.errors import TrainingError
from invmeasure.training.state import RunState

UNREADABLE_SUFFIX = ".unreadable"
_REASON_CHARS = 200  # of a restore error's message, kept in the one-line report


class UnreadableCheckpoint(Exception):
  """A checkpoint whose values cannot be read back as they were saved."""


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as one flat uint32 array (bools and 8-/16-bit types widened)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """sum_i (2 i + 1) w_i mod 2^32 over the words w of `x`: any one flipped bit changes it
  (an odd multiple of a power of two below 2^32 is never 0 mod 2^32)."""
  words = _words(x)
  odd = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
  return jnp.sum(words * odd, dtype=jnp.uint32)


_fingerprints = jax.jit(lambda tree: jax.tree.map(_leaf_fingerprint, tree))


def fingerprints(state: Any) -> dict[str, int]:
  """{leaf path: fingerprint} of a (possibly sharded) state, the same on every process."""
  values = _fingerprints(state)
  return {jax.tree_util.keystr(key): int(np.asarray(leaf.addressable_data(0)))
          for key, leaf in jax.tree_util.tree_leaves_with_path(values)}


def reason(error: BaseException) -> str:
  """A restore error in one short line: its type and the end of its first line, where
  TensorStore puts the cause (its JSON specs dropped)."""
  lines = str(error).strip().splitlines() or [""]
  message = lines[0].split(" [tensorstore_spec")[0].strip()
  if len(message) > _REASON_CHARS:
    message = "..." + message[-_REASON_CHARS:]
  return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _never_retrieved(record: logging.LogRecord) -> bool:
  return "exception was never retrieved" not in record.getMessage()


def _drop_failed_restore_reports() -> None:
  """After a failed restore, TensorStore reads still in flight finish on orbax's closed
  event loop and each reports `RuntimeError: Event loop is closed` as unraisable, and
  asyncio logs the sibling reads' errors, never retrieved, when they are collected. Those
  reports (noise, as the restore already failed) are dropped; any other passes on."""
  logging.getLogger("asyncio").addFilter(_never_retrieved)  # once: filters are a set
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


def all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (one process's failed read is everyone's)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def move_aside(directory: epath.Path, step: int) -> epath.Path:
  """Renames the checkpoint of `step` to `<step>.unreadable` (`.unreadable-2`, ... if
  taken), out of orbax's sight but kept for inspection; returns the new path."""
  target = directory / f"{step}{UNREADABLE_SUFFIX}"
  number = 2
  while target.exists():
    target = directory / f"{step}{UNREADABLE_SUFFIX}-{number}"
    number += 1
  (directory / str(step)).rename(target)
  return target


class Checkpointer:
  """Saves `RunState` every so often (asynchronously) and restores the newest readable."""

  def __init__(self, workdir: str, max_to_keep: int = 2,
               warn: Callable[[str], None] | None = None):
    self.directory = storage.checkpoint_directory(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: RunState, step: int) -> None:
    # Orbax writes to a temporary directory and renames it when complete, so a kill
    # mid-save leaves the previous checkpoint as the latest.
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                       custom_metadata={"fingerprints": fingerprints(state)})

  def restore(self, like: RunState, step: int) -> RunState:
    """The checkpoint of `step`, placed with the shardings of `like`.

    Raises:
      UnreadableCheckpoint: its values differ from those saved (fingerprints).
      Exception: whatever orbax and TensorStore raise for a file they cannot read.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    restored = RunState(*restored) if not isinstance(restored, RunState) else restored
    saved = (self._manager.metadata(step).custom_metadata or {}).get("fingerprints")
    if saved is not None:  # checkpoints written before fingerprints have none
      read = fingerprints(restored)
      differ = [key for key in read if saved.get(key) != read[key]]
      if differ or set(saved) != set(read):
        raise UnreadableCheckpoint(
            f"the values read differ from those saved ({(differ or ['the leaves'])[0]} "
            f"and {max(len(differ) - 1, 0)} more)")
    return restored

  def restore_latest(self, like: RunState) -> RunState | None:
    """The newest checkpoint that can be read, or None when there is none.

    A newer one that cannot be read is reported in one line (its step and why), renamed
    to `<step>.unreadable` and skipped. When checkpoints exist but none can be read,
    nothing is renamed and a `TrainingError` says how to start over.
    """
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if steps:
      _drop_failed_restore_reports()  # before: they start while a failing restore unwinds
    failures: list[tuple[int, str]] = []
    for step in steps:
      try:
        state, error = self.restore(like, step), None
      except Exception as e:  # orbax and TensorStore raise many types for a bad file
        state, error = None, e
      if all_processes(error is None):
        self._set_aside(failures, step)
        return state
      failures.append((step, reason(error) if error else "unreadable on another process"))
    if failures:
      why = "; ".join(f"step {step}: {text}" for step, text in failures)
      raise TrainingError(
          f"no checkpoint in {self.directory} can be read ({why}); nothing was moved. To "
          "start over, pass a new --workdir, or delete the checkpoints/ and metrics.jsonl "
          "of this one (a changed config cannot restore an older run's checkpoints either)")
    return None

  def _set_aside(self, failures: list[tuple[int, str]], restored: int) -> None:
    if not failures:
      return
    if jax.process_index() == 0:
      for step, why in failures:
        moved = move_aside(self.directory, step)
        self._warn(f"warning: the checkpoint of step {step} cannot be read ({why}); moved "
                   f"it to {moved}; resuming from step {restored}, the metric rows after "
                   "it dropped")
    _sync("invmeasure_checkpoints_moved_aside")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
