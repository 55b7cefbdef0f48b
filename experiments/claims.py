r"""Runs the CPU-scale experiments and checks every claim of the paper against them.

    python -m experiments.claims --workdir=runs/claims --jobs=2  # < 40 min on 2 cores
    python -m experiments.claims --workdir=runs/claims_678 --seeds=6,7,8 --jobs=2
    python -m experiments.claims --workdir=/tmp/claims --quick   # a smoke version

Writes DIR/claims.md (each claim, its numbers, the rule and the verdict), DIR/claims.json,
DIR/figures/ and DIR/runs/ (every run's metrics and checkpoints). Rerunning after a kill
resumes the runs from their checkpoints.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from invmeasure.claims import pipeline
from invmeasure.errors import ConfigError, TrainingError

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the runs and the report.')
_QUICK = flags.DEFINE_bool('quick', False, 'Tiny runs (seconds each): a smoke test of the '
                           'report, not evidence.')
_SEEDS = flags.DEFINE_list('seeds', None, 'Seeds to replicate every run on (default 0,1,2; '
                          'quick: 0,1), e.g. --seeds=3,4,5 to check that verdicts replicate.')
_JOBS = flags.DEFINE_integer('jobs', 1, 'Runs trained at once, each on a core of its own.')
flags.mark_flags_as_required(['workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    seeds = tuple(int(s) for s in _SEEDS.value) if _SEEDS.value else None
  except ValueError:
    sys.exit(f'error: --seeds={",".join(_SEEDS.value)} must be integers, e.g. --seeds=3,4,5')
  try:
    path = pipeline.write_report(_WORKDIR.value, quick=_QUICK.value, seeds=seeds,
                                 jobs=_JOBS.value)
  except (ConfigError, TrainingError) as error:
    sys.exit(f'error: {error}')
  except OSError as error:
    sys.exit(f'error: cannot write {error.filename or _WORKDIR.value}: '
             f'{error.strerror or error}; the finished runs under {_WORKDIR.value}/runs are '
             'kept and the rest resume from their checkpoints: rerun the same command')
  print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
