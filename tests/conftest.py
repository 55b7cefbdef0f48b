"""Test-session set-up, done before anything imports jax.

- 8 simulated CPU devices for the sharding tests (XLA reads the flag at start-up), and
  fast code generation (`tests/flags.py`), unless XLA_FLAGS already says otherwise.
- A persistent compilation cache shared by the test processes and the runs they start,
  so the many short end-to-end runs compile each program once.
- The slowest files start first, so that neither worker of `-n 2` is left running one
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


# The files that take the longest under `-n 2` (`--durations`), longest first; the rest
# take well under a minute each.
_SLOWEST_FILES = ("test_dry_run.py", "test_claims.py", "test_benchmarks_quick.py",
                  "test_training.py", "test_language_model_training.py",
                  "test_per_example_step.py", "test_imagenet.py", "test_cifar10_smoke.py")


def pytest_collection_modifyitems(items) -> None:
  """The slowest files first: xdist's `loadfile` (pyproject.toml) hands each file to the
  next free worker in this order, so neither worker is left running a long one alone at
  the end, and a file's module fixtures are set up once."""
  def rank(item) -> int:
    name = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
    return _SLOWEST_FILES.index(name) if name in _SLOWEST_FILES else len(_SLOWEST_FILES)
  items.sort(key=rank)
