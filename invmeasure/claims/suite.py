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
The Transformer arm is the Figure 3 twin (`configs/text_transformerxl.py`: Transformer-XL
with AdamW on the bytes of `pydoc_data.topics`), over the same seeds:
- `text_lr_<lr>` at `TEXT_LRS` (constant; the weight decay follows so that every run keeps
  1 / (lr lambda) = 300 steps and lasts twenty of them);
- `text_cosine`: the first rate, decayed to 0 over the run (Figure 3's schedule).
The 1-D example (`configs/synthetic_1d.py`) is deterministic: it runs once.

Sample sizes, computed before the run from the 2026-11-30 report's standard errors
(docs/claims.md then), for the pooled estimates to decide:
- Claim 20 (a smaller step lowers the loss): at c = 1/16 the change was -0.0006 with a
  standard error of 0.0004 per seed over 8 checkpoints x 32 minibatches (the errors are
  over checkpoints). Pooled over 3 seeds of s checkpoints each the error is
  0.0004 sqrt(8 / s) / sqrt(3); "held" needs change + 2 se < 0, and with a margin of 1.5
  on the change's size 2 se <= 0.0004, so se <= 0.0002 and s >= 8 (0.0004 / 0.0002)^2 / 3
  = 10.7. `step_size_states` = 16 (each seed alone then has se ~0.0003), with
  checkpoints every 12 epochs to provide them (18 in the second half).
- Claim 19 (the mean one-step change of F vanishes) is decided on the change telescoped
  from the diagnostic rows: a plateau window's batch-means error was ~0.01 in F, over
  ~8,000 steps between the first and last windows' centres: se ~2e-6 per step against a
  margin of 0.1 x 0.014 (a tenth of one step's typical change): no further samples needed.
- Claim 1: the loss change's error (~0.01) against its margin (5% of ~1.7 = 0.085): no
  further samples needed; claims 2-6 were decided on every seed alone already.
- Claim 13 compares the run's last six windows of one relaxation time (2,000 steps, 200
  projection rows, ten of the projections' autocorrelation time of ~20 rows) at lags 2
  and 5: within the 20,010-step run, which needs no lengthening. The seeds' spread of the
  growth was 0.04 on seeds 0-2, so three seeds give a 90% interval of about +-0.07 around
  it: enough to decide a growth of 0 or of 0.2 against the margin 0.1, not one near 0.1.
`quick` shrinks every run (a narrower model, fewer steps, two seeds) into a smoke version
for tests; its numbers are not evidence.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import ml_collections

import multiprocessing
import threading
from concurrent import futures

from configs import digits_interpolation, quickstart, synthetic_1d as synthetic_config
from configs import text_transformerxl
from invmeasure.analysis import figures, synthetic_figures
from invmeasure.data import batching, sources
from invmeasure.training import replicates, synthetic_1d

# The learning rates of the constant runs, largest first.
CONSTANT_LRS = (0.1, 0.03, 0.01)
MEASURE_RUN = "lr_0.1"  # the run whose checkpoints sample the empirical measure
# The Transformer arm's constant learning rates, largest first (AdamW).
TEXT_LRS = (1e-2, 3e-3)
TEXT_COSINE = "text_cosine"
# Where the 1-D example's claim (which has no seeds) stands in the report.
SYNTHETIC_POSITION = 8


def constant_name(lr: float) -> str:
  return f"lr_{lr:g}"


def text_name(lr: float) -> str:
  return f"text_lr_{lr:g}"


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
  text_arg: str                 # the argument of configs/text_transformerxl.py


def full() -> Suite:
  return Suite(quick=False, seeds=(0, 1, 2), num_epochs=435, overfit_epochs=300,
               widths=(32, 64), diagnostic_every_steps=23, num_minibatches=16,
               sharpness_iters=5, projection_every_steps=10,
               checkpoint_every_epochs=12,
               # Up to 1,024 minibatches, past the paper's K = 600 (Appendix A.2).
               estimator_sample_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
               estimator_repeats=20, step_size_states=16, step_size_minibatches=32,
               synthetic_steps=300, text_arg="")


def quick() -> Suite:
  return Suite(quick=True, seeds=(0, 1), num_epochs=6, overfit_epochs=12, widths=(8,),
               diagnostic_every_steps=5, num_minibatches=4,
               sharpness_iters=3, projection_every_steps=2, checkpoint_every_epochs=1,
               estimator_sample_sizes=(1, 2, 4, 8), estimator_repeats=4, step_size_states=2,
               step_size_minibatches=4, synthetic_steps=120, text_arg="tiny")


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
  configs.update(text_configs(suite))
  return configs


def text_configs(suite: Suite) -> dict[str, ml_collections.ConfigDict]:
  """The Transformer arm's runs by name."""
  def config(*args: str) -> ml_collections.ConfigDict:
    return text_transformerxl.get_config(",".join(filter(None, (suite.text_arg,) + args)))
  configs = {text_name(lr): config(f"lr={lr:g}") for lr in TEXT_LRS}
  configs[TEXT_COSINE] = config(f"lr={TEXT_LRS[0]:g}", "cosine")
  if suite.quick:  # enough rounds for the plateau's windows
    for c in configs.values():
      c.diagnostics.every_steps = 2
  return configs


def synthetic_config_for(suite: Suite) -> ml_collections.ConfigDict:
  config = synthetic_config.get_config()
  config.num_steps = suite.synthetic_steps
  return config


def _start_worker(cores) -> None:
  """A worker process's initialiser: run on one core of its own (XLA sizes its thread
  pool from the affinity), so that parallel runs do not oversubscribe the machine; and
  exit as soon as the report's process is gone, so a killed report leaves no orphan
  writing to a run (the next report resumes each run from its last checkpoint)."""
  os.sched_setaffinity(0, {cores.get()})
  parent = multiprocessing.parent_process()

  def exit_with_parent() -> None:
    parent.join()  # returns when the parent's end of its sentinel pipe closes
    os._exit(1)

  threading.Thread(target=exit_with_parent, daemon=True).start()


def run_all(suite: Suite, workdir: str, log=print,
            jobs: int = 1) -> tuple[str, dict[str, dict[int, str]]]:
  """Trains every run of the suite that is not finished yet, on every seed.

  Returns the 1-D example's workdir and {run name: {seed: workdir}}. Each run resumes
  from its checkpoints like any training run, so rerunning the report after a kill
  repeats no finished work. With `jobs` > 1, that many runs train at once in worker
  processes, each pinned to one core (small models use one core better than two).
  """
  runs_dir = os.path.join(workdir, "runs")
  synthetic_dir = os.path.join(runs_dir, "synthetic_1d")
  log("synthetic_1d")
  config = synthetic_config_for(suite)
  synthetic_figures.draw_run(synthetic_dir, synthetic_1d.run(config, synthetic_dir), config)
  workdirs: dict[str, dict[int, str]] = {}
  configs = training_configs(suite)
  for name in configs:
    workdirs[name] = {seed: replicates.seed_workdir(os.path.join(runs_dir, name), seed)
                      for seed in suite.seeds}
  # Seed by seed: runs that differ only in their seed compile the same programs, so the
  # second reads them from the compilation cache rather than compiling them alongside.
  work = [(name, config, seed) for seed in suite.seeds for name, config in configs.items()]
  if jobs <= 1:
    for name, config, seed in work:
      log(f"{name}, seed {seed}")
      replicates.train_seed(config, os.path.join(runs_dir, name), seed)
      figures.draw_run(workdirs[name][seed])
    return synthetic_dir, workdirs
  work.sort(key=lambda item: not item[0].startswith("text"))  # the longest runs first
  context = multiprocessing.get_context("spawn")
  cores = context.Queue()
  for core in sorted(os.sched_getaffinity(0))[:jobs]:
    cores.put(core)
  with futures.ProcessPoolExecutor(min(jobs, len(os.sched_getaffinity(0))),
                                   mp_context=context, initializer=_start_worker,
                                   initargs=(cores,)) as pool:
    pending = {pool.submit(replicates.train_seed, config, os.path.join(runs_dir, name),
                           seed): (name, seed) for name, config, seed in work}
    for done in futures.as_completed(pending):
      name, seed = pending[done]
      done.result()  # a failed run's error, raised here
      figures.draw_run(workdirs[name][seed])
      log(f"{name}, seed {seed}: done")
  return synthetic_dir, workdirs
