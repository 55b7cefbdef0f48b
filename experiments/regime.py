r"""Whether runs sit in the paper's Figure 1 regime: a table with a column per seed.

    python -m experiments.run --config=configs/quickstart.py --workdir=runs/qs --seeds=0,1,2
    python -m experiments.regime --workdir=runs/qs --out=docs/regime.md

--workdir is a run directory (local or gs://), or one holding `seed_<s>` run directories
(what `--seeds` writes); repeat it to compare runs. A run whose config changed when it was
resumed gets a line under the table naming the change and its step. The properties and their fixed thresholds are in
invmeasure/analysis/regime.py. Exits with status 1 when a property fails on some run.
"""

import os
import sys

from absl import app
from absl import flags

from invmeasure.analysis import regime, runs
from invmeasure.errors import ConfigError
from invmeasure.training import storage

_WORKDIR = flags.DEFINE_multi_string(
    'workdir', None, 'A run directory, or one holding seed_<s> run directories.')
_OUT = flags.DEFINE_string('out', None, 'Also write the table (markdown) to this file.')
flags.mark_flag_as_required('workdir')


def _run_dirs(workdir: str) -> list[str]:
  names = [p.name for p in storage.path(workdir).iterdir()]
  seeds = sorted((d for d in names if d.startswith('seed_')),
                 key=lambda d: int(d[len('seed_'):]) if d[len('seed_'):].isdigit() else -1)
  return [os.path.join(workdir, d) for d in seeds] or [workdir]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    for workdir in _WORKDIR.value:
      if not storage.path(workdir).is_dir():
        raise ConfigError(f'--workdir={workdir} does not exist; run experiments.run first')
    dirs = [(w, d) for w in _WORKDIR.value for d in _run_dirs(w)]
    loaded = [runs.load_run(d) for _, d in dirs]
  except ConfigError as error:
    sys.exit(f'error: {error}')
  # Columns named by the given directory and, for seeds, the seed's below it.
  base = lambda path: os.path.basename(os.path.normpath(path))  # noqa: E731
  names = [base(w) if d == w else f'{base(w)}/{base(d)}' for w, d in dirs]
  numbers = [regime.regime_numbers(run.rows, run.config, regime.steps_per_epoch(run.rows))
             for run in loaded]
  text = regime.table(names, numbers)
  notes = [f'- {name}: config changed at step {entry["step"]} ('
           + ', '.join(f'{k} {c["old"]} -> {c["new"]}' for k, c in entry['changes'].items())
           + f'; {entry["accepted_by"]})'
           for name, run in zip(names, loaded) for entry in run.history]
  if notes:
    text += '\n\n' + '\n'.join(notes)
  print(text)
  if _OUT.value:
    try:
      storage.write_text(_OUT.value, text + '\n')
    except OSError as error:
      sys.exit(f'error: cannot write --out={_OUT.value}: {error.strerror or error}')
  if not all(all(regime.decide(n).values()) for n in numbers):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
