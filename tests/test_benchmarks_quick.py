"""The benchmark scripts still run: each with --quick, in a fresh interpreter.

No timing is asserted; this only keeps the scripts from rotting. PyTorch is optional for
diagnostics_vs_torch (its columns then read "n/a").
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Quick runs time nothing worth keeping, so skip XLA's slow backend optimisations: this
# halves their (compile-dominated) run time. It also drops the test session's simulated
# devices, which the scripts do not use.
_ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true"}


@pytest.mark.parametrize("module, header", [
    ("benchmarks.loop_lowering", "| variant | median ms | vs (a) |"),
    ("benchmarks.diagnostics_vs_torch", "| quantity | JAX ms | PyTorch ms | JAX/PyTorch | notes |"),
])
def test_quick_run_prints_its_table(module: str, header: str) -> None:
  proc = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=ROOT, env=_ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert header in proc.stdout, proc.stdout[-3000:]
