"""The CPU-scale runs behind the claims report, and running them.

Every run is the quickstart's CPU twin of the ImageNet experiment (`configs/quickstart.py`:
digits under fresh shift-and-noise augmentation, which the network cannot interpolate)
with a few fields changed, so that differences between runs are the ones a claim is
about, and each is repeated over `Suite.seeds` (independent replicates, in
`runs/<name>/seed_<s>`):
- `lr_0.1`, `lr_0.03`, `lr_0.01`: constant learning rates (Figures 1 and 2). The weight
  decay is scaled so that eta * lambda stays at the quickstart's 5e-5: every run then has
  the same relaxation time (1 - beta) / (eta lambda) = 2,000 steps and lasts ten of them.
  (With one lambda, the 0.01 run would need ten times the steps to equilibrate.)
  `lr_0.1` keeps a checkpoint every few epochs, the samples of its empirical measure for
  the fixed-weight studies (estimators, step size).
- `step`: 0.1, divided by 10 half-way (Figure 1's schedule).
- `plain_sgd`: no momentum, for Theorem 4.3's ball, which is stated for plain SGD; step
  0.5 (half the momentum runs' effective 0.1 / (1 - 0.9)) and lambda 1e-3, so again
  1 / (eta lambda) = 2,000 steps.
- `overfit`: `configs/digits_interpolation.py` (no augmentation) on 256 examples without
  weight decay, to be fitted exactly (Figure 6).
The 1-D example (`configs/synthetic_1d.py`) is deterministic: it runs once.
`quick` shrinks every run (a narrower model, fewer steps, two seeds) into a smoke version
for tests; its numbers are not evidence.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import ml_collections

from configs import digits_interpolation, quickstart, synthetic_1d as synthetic_config
from invmeasure.analysis import figures, synthetic_figures
from invmeasure.data import batching, sources
from invmeasure.training import replicates, synthetic_1d

# The learning rates of the constant runs, largest first.
CONSTANT_LRS = (0.1, 0.03, 0.01)
MEASURE_RUN = "lr_0.1"  # the run whose checkpoints sample the empirical measure
# Where the 1-D example's claim (which has no seeds) stands in the report.
SYNTHETIC_POSITION = 8


def constant_name(lr: float) -> str:
  return f"lr_{lr:g}"


class Suite(NamedTuple):
  """Sizes of everything the report runs; `full()` and `quick()` are the two used."""
  quick: bool
  seeds: tuple[int, ...]        # every training run is repeated with each
  num_epochs: int
  overfit_epochs: int
  widths: tuple[int, ...]
  diagnostic_every_steps: int   # a round every this many steps (46: once an epoch)
  num_minibatches: int          # K of each diagnostic round
  sharpness_iters: int
  projection_every_steps: int
  checkpoint_every_epochs: int  # of the measure run; its plateau checkpoints are studied
  estimator_sample_sizes: tuple[int, ...]
  estimator_repeats: int
  step_size_states: int         # plateau checkpoints in the step-size study
  step_size_minibatches: int
  synthetic_steps: int


def full() -> Suite:
  return Suite(quick=False, seeds=(0, 1, 2), num_epochs=435, overfit_epochs=300,
               widths=(32, 64), diagnostic_every_steps=23, num_minibatches=16,
               sharpness_iters=5, projection_every_steps=10,
               checkpoint_every_epochs=20,
               # Up to 1,024 minibatches, past the paper's K = 600 (Appendix A.2).
               estimator_sample_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
               estimator_repeats=20, step_size_states=8, step_size_minibatches=32,
               synthetic_steps=300)


def quick() -> Suite:
  return Suite(quick=True, seeds=(0, 1), num_epochs=6, overfit_epochs=12, widths=(8,),
               diagnostic_every_steps=5, num_minibatches=4,
               sharpness_iters=3, projection_every_steps=2, checkpoint_every_epochs=1,
               estimator_sample_sizes=(1, 2, 4, 8), estimator_repeats=4, step_size_states=2,
               step_size_minibatches=4, synthetic_steps=120)


def _sized(config: ml_collections.ConfigDict, suite: Suite) -> ml_collections.ConfigDict:
  config.num_epochs = suite.num_epochs
  config.model.widths = suite.widths
  config.diagnostics.every_steps = suite.diagnostic_every_steps
  config.diagnostics.num_minibatches = suite.num_minibatches
  config.diagnostics.sharpness_iters = suite.sharpness_iters
  config.diagnostics.projection_every_steps = suite.projection_every_steps
  return config


def _base(suite: Suite) -> ml_collections.ConfigDict:
  return _sized(quickstart.get_config(), suite)


def _relaxation_matched(config: ml_collections.ConfigDict, lr: float,
                        momentum: float) -> ml_collections.ConfigDict:
  """`config` at step `lr` and `momentum`, its weight decay set so that the relaxation
  time (1 - momentum) / (lr * weight_decay) stays the quickstart's."""
  base = config.optimizer
  relaxation = (1 - base.momentum) / (base.learning_rate * base.weight_decay)
  config.optimizer.learning_rate = lr
  config.optimizer.momentum = momentum
  config.optimizer.weight_decay = (1 - momentum) / (lr * relaxation)
  return config


def training_configs(suite: Suite) -> dict[str, ml_collections.ConfigDict]:
  """The training runs by name (the name is the run's directory under `DIR/runs`), each
  to be run once per seed."""
  configs = {}
  for lr in CONSTANT_LRS:
    configs[constant_name(lr)] = _relaxation_matched(_base(suite), lr, momentum=0.9)
  measure = configs[MEASURE_RUN]
  steps_per_epoch = batching.steps_per_epoch(sources.NUM_TRAIN_EXAMPLES[measure.dataset],
                                             measure.batch_size)
  # Off the epoch boundaries: a state that has just seen every example once is not a
  # typical sample of the iterates (its one-step change of the full loss is biased).
  measure.checkpoint_every_steps = suite.checkpoint_every_epochs * steps_per_epoch + 7
  measure.checkpoint_max_to_keep = suite.num_epochs // suite.checkpoint_every_epochs + 2

  step = _base(suite)
  step.schedule.name = "step"
  step.schedule.boundaries_epochs = (suite.num_epochs / 2,)
  configs["step"] = step

  configs["plain_sgd"] = _relaxation_matched(_base(suite), 0.5, momentum=0.0)

  overfit = _sized(digits_interpolation.get_config(), suite)
  overfit.train_examples = 256
  overfit.optimizer.weight_decay = 0.0
  overfit.num_epochs = suite.overfit_epochs
  overfit.diagnostics.every_steps = 8  # once an epoch (256 // 32 steps)
  overfit.log_every_steps = 8
  configs["overfit"] = overfit
  return configs


def synthetic_config_for(suite: Suite) -> ml_collections.ConfigDict:
  config = synthetic_config.get_config()
  config.num_steps = suite.synthetic_steps
  return config


def run_all(suite: Suite, workdir: str, log=print) -> tuple[str, dict[str, dict[int, str]]]:
  """Trains every run of the suite that is not finished yet, on every seed.

  Returns the 1-D example's workdir and {run name: {seed: workdir}}. Each run resumes
  from its checkpoints like any training run, so rerunning the report after a kill
  repeats no finished work.
  """
  runs_dir = os.path.join(workdir, "runs")
  synthetic_dir = os.path.join(runs_dir, "synthetic_1d")
  log("synthetic_1d")
  config = synthetic_config_for(suite)
  synthetic_figures.draw_run(synthetic_dir, synthetic_1d.run(config, synthetic_dir), config)
  workdirs: dict[str, dict[int, str]] = {}
  for name, config in training_configs(suite).items():
    workdirs[name] = {}
    for seed in suite.seeds:
      log(f"{name}, seed {seed}")
      replicates.train_seed(config, os.path.join(runs_dir, name), seed)
      workdirs[name][seed] = replicates.seed_workdir(os.path.join(runs_dir, name), seed)
      figures.draw_run(workdirs[name][seed])
  return synthetic_dir, workdirs
