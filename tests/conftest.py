"""Test-session set-up, done before anything imports jax.

- 8 simulated CPU devices for the sharding tests (XLA reads the flag at start-up), and
  fast code generation (`tests/flags.py`), unless XLA_FLAGS already says otherwise.
- A persistent compilation cache shared by the test processes and the runs they start,
  so the many short end-to-end runs compile each program once.
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
