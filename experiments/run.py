r"""Runs one experiment of the project from a config file.

    python -m experiments.run --config=configs/synthetic_1d.py --workdir=/tmp/synthetic_1d

Fields can be overridden on the command line, e.g. `--config.num_steps=100`.
"""

import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from invmeasure.analysis import figures, synthetic_figures
from invmeasure.errors import ConfigError, TrainingError
from invmeasure.training import distributed, dry_run, loop, replicates, synthetic_1d

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for config.json, metrics.jsonl and figures/.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for a multi-process job.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, 'This process, 0..num_processes-1.')
_DISTRIBUTED_AUTO = flags.DEFINE_bool(
    'distributed_auto', False, 'Read the cluster from the environment (TPU pod, SLURM).')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Compile the train step and diagnostic round for the configured '
    'batch on the devices present, without data, and print FLOPs and memory.')
_SEEDS = flags.DEFINE_list(
    'seeds', None, 'Train once per seed into WORKDIR/seed_<s> and draw the seeds\' mean '
    'with a band into WORKDIR/figures, e.g. --seeds=0,1,2.')
_ACCEPT_CONFIG_CHANGE = flags.DEFINE_bool(
    'accept_config_change', False, 'Resume a run whose config differs from the recorded '
    'one in fields that may not change mid-run; the change is kept, with its step, in '
    'WORKDIR/config_history.jsonl.')
flags.mark_flags_as_required(['config', 'workdir'])


def _summary(row: dict) -> str:
  return ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in row.items())


def _draw(draw, *args) -> None:
  """Draws a run's figures (process 0); a failed write is one line saying the run is safe."""
  if jax.process_index() != 0:
    return
  try:
    draw(*args)
  except OSError as error:
    raise TrainingError(
        f'cannot write the figures ({error.filename or os.path.join(_WORKDIR.value, "figures")}'
        f': {error.strerror or error}); the run itself is complete and saved in '
        f'{_WORKDIR.value}; free space and draw them with python -m experiments.plot '
        f'--workdir={args[0]}') from None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing libraries log every save at INFO
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         _DISTRIBUTED_AUTO.value)
  config = _CONFIG.value
  experiment = config.get('experiment', 'train')
  try:
    if experiment != 'train' and _SEEDS.value is not None:
      raise ConfigError(f'--seeds applies to training configs, not config.experiment='
                        f'{experiment!r}')
    accept = _ACCEPT_CONFIG_CHANGE.value
    if experiment == 'synthetic_1d':
      rows = synthetic_1d.run(config, _WORKDIR.value)
      _draw(synthetic_figures.draw_run, _WORKDIR.value, rows, config)
      print(f'Wrote {_WORKDIR.value}\n{synthetic_1d.summarize(rows)}')
    elif experiment == 'train' and _DRY_RUN.value:
      dry_run.dry_run(config)
    elif experiment == 'train' and _SEEDS.value is not None:
      seeds = replicates.parse_seeds(_SEEDS.value)
      last_rows = replicates.train_seeds(config, _WORKDIR.value, seeds, accept)
      for seed in seeds:
        _draw(figures.draw_run, replicates.seed_workdir(_WORKDIR.value, seed))
      _draw(figures.draw_seeds, _WORKDIR.value, seeds)
      for seed, row in zip(seeds, last_rows):
        print(f'Finished {replicates.seed_workdir(_WORKDIR.value, seed)}: '
              f'{_summary(row)}')
    elif experiment == 'train':
      row = loop.train_and_evaluate(config, _WORKDIR.value, accept)
      _draw(figures.draw_run, _WORKDIR.value)
      print(f'Finished {_WORKDIR.value}: {_summary(row)}')
    else:
      raise ConfigError(f'config.experiment={experiment!r} is unknown; use "train" or '
                        '"synthetic_1d"')
  except (ConfigError, TrainingError) as error:
    sys.exit(f'error: {error}')
  except OSError as error:  # the 1-D example's files; a training run reports its own
    sys.exit(f'error: cannot write {error.filename or _WORKDIR.value}: '
             f'{error.strerror or error}; rerun the same command once it can be written')


if __name__ == '__main__':
  app.run(main)
