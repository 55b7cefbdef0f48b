"""Test-session set-up, done before anything imports jax.

- 8 simulated CPU devices for the sharding tests (XLA reads the flag at start-up), and
  fast code generation (`tests/flags.py`), unless XLA_FLAGS already says otherwise.
- A persistent compilation cache shared by the test processes and the runs they start,
  so the many short end-to-end runs compile each program once.
- The slowest tests start first, so that neither worker of `-n 2` is left running one
  alone at the end.
"""

import os
import tempfile

from tests.flags import EIGHT_DEVICES, FAST_CODEGEN

for _flags in (EIGHT_DEVICES, FAST_CODEGEN):
  _name = _flags.split("=")[0]
  if _name not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flags).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "invmeasure-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


import numpy as np  # noqa: E402  (after the environment set-up above)
import pytest  # noqa: E402


@pytest.fixture
def seed() -> int:
  """A fresh random seed for each test; printed, so a failure shows how to reproduce it."""
  value = int(np.random.default_rng().integers(2**31 - 2))
  print(f"seed={value}")
  return value


# A minute or more each on 2 cores (`--durations`); the rest take seconds.
_SLOWEST = ("test_claims.py::test_quick_report", "test_dry_run.py", "test_benchmarks_quick.py",
            "test_imagenet.py::test_tiny", "test_cifar10_smoke.py", "test_regime.py::test_quick")
# Modules whose tests share a costly module fixture (a training run, a written data set):
# each runs on one worker, which sets the fixture up once.
_ONE_WORKER = ("test_benchmarks_quick.py", "test_language_model_training.py",
               "test_checkpoint_recovery.py", "test_training.py", "test_studies.py",
               "test_workdir.py", "test_resnet.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items) -> None:
  """The slowest first; xdist's `loadgroup` (pyproject.toml) hands tests out one at a time
  in this order, and each `xdist_group` to a single worker."""
  items.sort(key=lambda item: not any(name in item.nodeid for name in _SLOWEST))
  for item in items:
    module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
    if module in _ONE_WORKER:
      item.add_marker(pytest.mark.xdist_group(module))
