"""Whether the input pipeline holds the train step back.

The driver's loop as it runs (`loop._Batches`: the task reads the next step's batch on a
thread while the device computes, then `make_array_from_process_local_data` places it)
against the same steps on batches already on the device, and the loader alone. For
configs/quickstart.py (digits, in memory) and configs/cifar10_resnet18.py on TFDS's mock
CIFAR-10 (`tfds.testing.mock_data`: random examples of the real shapes; the read goes
through the same `tfds.data_source` path as the prepared ArrayRecord files).

    python -m benchmarks.input_pipeline
    python -m benchmarks.input_pipeline --quick   # tiny configs, CI
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (after the path set-up for file runs)
from invmeasure.training import loop  # noqa: E402

HEADER = ("config", "batch", "device-resident ms/step", "real loader ms/step",
          "loader / resident", "loader alone ms/batch", "notes")


@dataclasses.dataclass(frozen=True)
class Case:
  config: str
  arg: str
  steps: int      # steps per timed repetition
  repeats: int
  mock: bool      # TFDS mock data


def cases(quick: bool) -> list[Case]:
  if quick:
    return [Case("quickstart", "tiny", 4, 1, False), Case("cifar10_resnet18", "tiny", 2, 1, True)]
  return [Case("quickstart", "", 200, 7, False), Case("cifar10_resnet18", "", 3, 3, True)]


def _mock_getitems(*args, generator, serialized=False):
  """tfds 4.9.10's mocked batch read, repaired as tests/tfds_mock.py does: the keys
  arrive as the last positional argument."""
  del serialized
  return [generator[int(key)] for key in args[-1]]


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking
  original = mocking._getitems
  mocking._getitems = _mock_getitems
  try:
    with tfds.testing.mock_data(num_examples=num_examples):
      yield
  finally:
    mocking._getitems = original


def measure(case: Case) -> tuple:
  config = importlib.import_module(f"configs.{case.config}").get_config(case.arg)
  plan = loop.make_plan(config)
  task = plan.task
  state = loop.init_state_fn(plan)(loop.init_key(config))
  step = loop.jit_train_step(plan)
  batches = loop._Batches(task, plan.batch_sharding)
  resident = [batches.train(t) for t in range(case.steps)]
  state, _ = step(state, resident[0])  # compile
  position = {"t": case.steps}

  def on_device():
    nonlocal state
    for batch in resident:
      state, metrics = step(state, batch)
    return metrics

  def with_loader():
    nonlocal state
    for _ in range(case.steps):
      state, metrics = step(state, batches.train(position["t"]))
      position["t"] += 1
    return metrics

  def loader_alone():
    for _ in range(case.steps):
      out = batches._to_global(task.train_batch(position["t"]))
      position["t"] += 1
    return out

  fns = {"resident": on_device, "loader": with_loader, "alone": loader_alone}
  times = common.interleaved_ms(fns, case.repeats, per_call={k: case.steps for k in fns})
  batches.close()
  source = "TFDS mock data" if case.mock else "in memory"
  aug = config.get("augmentation", "none")
  return (f"{case.config}{':' + case.arg if case.arg else ''}", config.batch_size,
          common.ms(times["resident"]), common.ms(times["loader"]),
          common.ratio(times["loader"], times["resident"]), common.ms(times["alone"]),
          f"{source}; augmentation {aug} (on the device)")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny configs, one repetition")
  args = parser.parse_args(argv)
  print(common.machine_line())
  rows = []
  for case in cases(args.quick):
    with mock_tfds(num_examples=2048) if case.mock else contextlib.nullcontext():
      rows.append(measure(case))
  print()
  print(common.table(HEADER, rows, "lrrrrrl"))
  print(common.end_line())


if __name__ == "__main__":
  main()
