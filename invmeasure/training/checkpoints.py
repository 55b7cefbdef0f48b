"""Checkpoints of the run state with orbax, and resuming from the latest one."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from invmeasure.training.state import RunState


class Checkpointer:
  """Saves `RunState` every so often (asynchronously) and restores the latest."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: RunState, step: int) -> None:
    # Orbax writes to a temporary directory and renames it when complete, so a kill
    # mid-save leaves the previous checkpoint as the latest.
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, like: RunState, step: int) -> RunState:
    """The checkpoint of `step`, placed with the shardings of `like`."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return RunState(*restored) if not isinstance(restored, RunState) else restored

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
