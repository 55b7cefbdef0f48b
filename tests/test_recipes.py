"""The launch recipes of docs/pods.md name only flags and config fields that exist."""

import importlib.util
import os
import re

import pytest
from absl import flags

import experiments.run  # noqa: F401  (defines the entry point's flags)
from tests.driver import REPO

RECIPES = os.path.join(REPO, "docs", "pods.md")


def _commands(module):
  """Each `python -m module ...` command of the recipes, continuation lines joined."""
  text = open(RECIPES, encoding="utf-8").read().replace("\\\n", " ")
  return [line[line.index(f"-m {module}"):] for line in text.splitlines()
          if f"-m {module} " in line]


def _config(spec):
  """The ConfigDict of `configs/x.py[:arg]`, as the entry point loads it."""
  path, _, arg = spec.partition(":")
  loaded = importlib.util.spec_from_file_location("recipe_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(loaded)
  loaded.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def test_the_recipes_start_runs_with_every_launch_flag():
  commands = _commands("experiments.run")
  assert len(commands) == 3  # the dry run, the TPU pod, the SLURM job
  used = {m.group(1) for c in commands for m in re.finditer(r"--(\w+)", c)}
  assert {"distributed_auto", "workdir", "config", "dry_run"} <= used
  assert "--workdir=gs://" in " ".join(commands)


@pytest.mark.parametrize("command", _commands("experiments.run"))
def test_every_flag_and_config_field_of_a_recipe_exists(command):
  names = set(flags.FLAGS)
  config = None
  for match in re.finditer(r"--([\w.]+)(?:=(\S+))?", command):
    name, value = match.groups()
    if name == "config":
      config = _config(value)
    elif name.startswith("config."):
      node = config
      for part in name.split(".")[1:]:
        assert part in node, f"{name} is not a field of the recipe's config"
        node = node[part]
    else:
      assert name in names, f"--{name} is not a flag of experiments.run"


@pytest.mark.parametrize("command", _commands("experiments.plot")
                         + _commands("invmeasure.data.wikitext103"))
def test_the_other_entry_points_take_the_recipes_flags(command):
  module = command.split()[1]
  source = open(os.path.join(REPO, *module.split(".")) + ".py", encoding="utf-8").read()
  for name in re.findall(r"--(\w+)", command):
    assert (f'"{name}"' in source or f"'{name}'" in source
            or f'"--{name}"' in source), f"--{name} is not a flag of {module}"
