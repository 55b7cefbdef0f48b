r"""Draws the paper's training figures from one or more run directories.

    python -m experiments.plot --workdir=runs/lr0.1 --workdir=runs/lr0.05 \
        --out_dir=runs/compare

Several runs are overlaid and labelled by what differs between their configs. The PNGs go
to --out_dir (default: the first workdir's figures/); their paths are printed.
"""

import os
import sys

from absl import app
from absl import flags

from invmeasure.analysis import figures
from invmeasure.errors import ConfigError

_WORKDIR = flags.DEFINE_multi_string(
    "workdir", None, "A run directory (holding metrics.jsonl); repeat to overlay runs.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Where to write the PNGs; default: the first workdir's figures/.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  workdirs = _WORKDIR.value
  out_dir = _OUT_DIR.value or os.path.join(workdirs[0], "figures")
  try:
    paths = figures.write_figures(workdirs, out_dir)
  except ConfigError as error:
    sys.exit(f"error: {error}")
  except OSError as error:
    sys.exit(f"error: cannot write figures to --out_dir={out_dir}: {error.strerror}")
  print("\n".join(paths))


if __name__ == "__main__":
  app.run(main)
