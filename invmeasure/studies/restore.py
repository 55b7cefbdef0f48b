"""A run's weights at a saved step, rebuilt from its workdir alone.

`load_run_state(workdir, step)` reads the `config.json` the driver wrote, rebuilds the
run's plan (task, data, optimizer) and restores the `RunState` of a checkpoint, so that
experiments can be made at fixed weights long after the run ended.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from invmeasure.training import checkpoints, loop, provenance, storage
from invmeasure.errors import ConfigError
from invmeasure.training.state import RunState


def _tuples(value: Any) -> Any:
  """JSON's lists back to the tuples the configs hold (e.g. `model.widths`)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config of the run in `workdir` (local or `gs://`), as it was at `step` (changes
  recorded in its config history after `step` undone; the latest when None).

  Raises:
    ConfigError: the workdir has no config.json, or an unreadable one.
  """
  fields = provenance.read_config(workdir)
  if fields is None:
    raise ConfigError(f"--workdir={workdir} has no config.json, so it is not a run's "
                      "workdir; pass the directory `python -m experiments.run --workdir=...` "
                      "wrote")
  if step is not None:
    fields = provenance.config_at(fields, provenance.read_history(workdir), step)
  return ml_collections.ConfigDict(_tuples(fields))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps whose checkpoints exist in `workdir/checkpoints`, ascending.

  Orbax writes a step to a temporary directory and renames it to the step's number when
  complete, so only finished checkpoints are listed.
  """
  directory = storage.checkpoint_directory(workdir)
  if not directory.is_dir():
    return []
  return sorted(int(entry.name) for entry in directory.iterdir()
                if entry.name.isdigit() and entry.is_dir())


def _checked_steps(workdir: str, steps: list[int] | None) -> list[int]:
  """`steps` (all saved ones when None), each checked to have a checkpoint."""
  available = checkpoint_steps(workdir)
  if not available:
    raise ConfigError(f"--workdir={workdir} has no checkpoints; rerun the run's command "
                      "(it resumes and saves every config.checkpoint_every_steps)")
  steps = available if steps is None else [int(s) for s in steps]
  for step in steps:
    if step not in available:
      raise ConfigError(f"--workdir={workdir} has no checkpoint at step {step}; it has "
                        f"steps {', '.join(map(str, available))} (set "
                        "config.checkpoint_max_to_keep higher in the run to keep more)")
  if not steps:
    raise ConfigError(f"no steps given for --workdir={workdir}; pass some of "
                      f"{', '.join(map(str, available))}")
  return steps


def load_run_states(workdir: str, steps: list[int] | None = None
                    ) -> tuple[loop.Plan, list[RunState]]:
  """(plan, states): the run's plan and its states at the checkpoints of `steps` (all
  saved ones when None), each placed as the run placed it (`plan.state_sharding`).

  Raises a ConfigError naming the workdir and the steps that exist when there is no
  config or no such checkpoint.
  """
  steps = _checked_steps(workdir, steps)
  # The plan of the earliest step: a run may have changed only fields that leave the
  # trajectory alone since, or ones --accept_config_change recorded.
  config = load_config(workdir, min(steps))
  plan = loop.make_plan(config)
  like = loop.init_state_fn(plan)(loop.init_key(config))
  checkpointer = checkpoints.Checkpointer(workdir)
  try:
    states = [checkpointer.restore(like, step) for step in steps]
  finally:
    checkpointer.close()
  return plan, states


def load_run_state(workdir: str, step: int | None = None) -> tuple[loop.Plan, RunState]:
  """(plan, state): the run's plan and its state at checkpoint `step` (the latest if
  None); see `load_run_states`."""
  if step is None:
    load_config(workdir)  # a missing config is the first thing to report
    step = _checked_steps(workdir, None)[-1]
  plan, (state,) = load_run_states(workdir, [step])
  return plan, state


def on_one_device(tree: Any, device: jax.Device | None = None) -> Any:
  """`tree` on one device (the first local one by default).

  A restored state is replicated over the run's mesh; computing on it there would repeat
  the same work on every device, which on simulated CPU devices shares the same cores.
  """
  return jax.device_put(tree, device or jax.local_devices()[0])


# Augmented copies of each example that stand for the expectation over augmentation.
AUGMENTATION_DRAWS = 4


def training_set(task: Any, max_examples: int | None = None,
                 augmentation_draws: int = AUGMENTATION_DRAWS) -> dict | None:
  """All training examples of `task` as numpy arrays (`task.source` read in index order),
  or None when the task has no random-access source or more than `max_examples`.

  When the task's diagnostic loss augments each example on the device (an augmented
  twin with `diagnostics.augment='train'`), the set is `augmentation_draws` copies of
  the examples, each with its own `augment_index`: a fixed sample of the augmented
  data whose mean loss estimates the objective SGD follows (the expectation over data
  and augmentation), the same draws at every weight of one state (common random
  numbers for differences).
  """
  source = getattr(task, "source", None)
  if source is None:
    return None
  size = len(source)
  if max_examples is not None and size > max_examples:
    return None
  examples = source.read(np.arange(size), None)
  if getattr(task, "augments_diagnostics", False):
    examples = {k: np.concatenate([v] * augmentation_draws) for k, v in examples.items()}
    examples["augment_index"] = np.arange(size * augmentation_draws, dtype=np.int32)
  return examples
