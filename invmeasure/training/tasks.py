"""The kinds of training task, chosen by the config's data set.

A task owns everything that depends on what is learnt from what, so that the loop
(`loop.train_and_evaluate`) and the dry run (`dry_run.dry_run`) stay the same for all:
how the state is initialised, the pure train step, the loss of the diagnostic round, and
which data each step reads. Kinds:
- `ImageTask` (image_task.py): classifiers on digits, CIFAR-10, ImageNet.
- `LanguageModelTask` (lm_task.py): Transformer-XL on tiny_text or WikiText-103.
"""

from __future__ import annotations

from typing import Protocol

import jax
import ml_collections
import numpy as np

from invmeasure.data import text_sources
from invmeasure.training import step as step_lib
from invmeasure.training.image_task import ImageTask
from invmeasure.training.lm_task import LanguageModelTask
from invmeasure.training.state import RunState


class Task(Protocol):
  """What the loop needs of a task.

  The jittable parts (`init_run_state`, `train_step`, `diagnostic_loss`, `diagnostic_fns`) see global
  arrays; the data parts run on the host and return this process's share of a global
  batch (its rows), as numpy, a pure function of (seed, step).
  """
  optimization: step_lib.Optimization  # epoch length, steps, schedule, optimizer

  def init_run_state(self, key: jax.Array) -> RunState:
    """The state at step 0 (weights from `key`)."""

  def train_step(self, state: RunState, batch: dict) -> tuple[RunState, dict]:
    """One optimizer step on the global batch; returns the new state and {'loss': ...}."""

  def diagnostic_loss(self, state: RunState, minibatch: dict) -> tuple:
    """(loss_fn, batch): the deterministic minibatch loss the round measures at `state`,
    `loss_fn(params, batch)`, and the minibatch as that loss takes it."""

  def diagnostic_fns(self) -> step_lib.DiagnosticFns:
    """The pieces of a diagnostic round (`step.make_diagnostic_fns` of the task's loss)."""

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the training batch of optimizer step `step` (0-based)."""

  def diagnostic_batches(self, step: int, num_minibatches: int,
                         batch_size: int) -> list[dict[str, np.ndarray]]:
    """This process's part of each of the K minibatches of the round after `step` steps."""

  def abstract_batch(self, batch_size: int, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a global training (or diagnostic) batch, for the dry run."""


def make_task(config: ml_collections.ConfigDict, abstract: bool = False) -> Task:
  """The task of a checked config, its training data opened (ConfigError when missing).

  With `abstract` nothing is read: the data set's known sizes stand in for it, and only
  the jittable parts and `abstract_batch` may be used.
  """
  if config.dataset in text_sources.DATASETS:
    return LanguageModelTask.from_config(config, abstract)
  return ImageTask.from_config(config, abstract)
