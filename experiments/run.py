r"""Runs one experiment of the project from a config file.

    python -m experiments.run --config=configs/synthetic_1d.py --workdir=/tmp/synthetic_1d

Fields can be overridden on the command line, e.g. `--config.num_steps=100`.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from invmeasure.training import synthetic_1d
from invmeasure.training.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for config.json, metrics.jsonl and figures/.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
  experiment = config.get('experiment', 'train')
  try:
    if experiment == 'synthetic_1d':
      rows = synthetic_1d.run(config, _WORKDIR.value)
      logging.info('Wrote %s\n%s', _WORKDIR.value, synthetic_1d.summarize(rows))
    else:
      raise ConfigError(
          f'config.experiment={experiment!r}: the training driver is not built yet; '
          'only "synthetic_1d" runs for now')
  except ConfigError as error:
    sys.exit(f'error: {error}')


if __name__ == '__main__':
  app.run(main)
