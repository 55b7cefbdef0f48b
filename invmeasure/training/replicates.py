"""One config run over several seeds: the replicates that tell signal from noise.

`python -m experiments.run --config=... --workdir=DIR --seeds=0,1,2` trains the config
once per seed into DIR/seed_0, DIR/seed_1, DIR/seed_2 (each resumable like any run); the
entry point then draws the seeds' mean with a min-to-max band into DIR/figures
(`analysis.figures.draw_seeds`).
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import ml_collections

from invmeasure.training import config_checks, loop
from invmeasure.errors import ConfigError


def parse_seeds(values: Sequence[str]) -> list[int]:
  """`--seeds` as distinct integers, or a one-line ConfigError."""
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise ConfigError(f"--seeds={','.join(values)} must be comma-separated integers, "
                      "e.g. --seeds=0,1,2") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f"--seeds={','.join(values)} must name at least one seed, each once")
  return seeds


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


def train_seed(config: ml_collections.ConfigDict, workdir: str, seed: int,
               accept_config_change: bool = False) -> dict:
  """Trains `config` with `seed` into `seed_workdir(workdir, seed)` (the caller's config
  is left alone); returns the run's last row."""
  replicate = config.copy_and_resolve_references()
  replicate.seed = seed
  return loop.train_and_evaluate(replicate, seed_workdir(workdir, seed), accept_config_change)


def train_seeds(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
                accept_config_change: bool = False) -> list[dict]:
  """Trains `config` once per seed (finished seeds are not rerun; a killed one resumes);
  returns each run's last row."""
  config_checks.check_workdir(workdir)
  config_checks.check_config(config, jax.device_count())
  return [train_seed(config, workdir, seed, accept_config_change) for seed in seeds]
