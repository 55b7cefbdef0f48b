"""The benchmark scripts still run: each with --quick, in a fresh interpreter.

No timing is asserted; this only keeps the scripts from rotting. PyTorch is optional for
the scripts that compare with it (their columns then read "n/a"). The scripts start
together, two at a time, when the first test asks for its result: on two cores their
single-threaded parts (imports, tracing) overlap, which keeps the file near a minute.
"""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

from tests.flags import FAST_CODEGEN

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Quick runs time nothing worth keeping, so skip XLA's slow backend optimisations: this
# halves their (compile-dominated) run time. It also drops the test session's simulated
# devices, which the scripts do not use (scaling.py sets its own per child).
_ENV = {**os.environ, "XLA_FLAGS": FAST_CODEGEN}

# Each script and a line of the table it prints; the slowest first.
SCRIPTS = {
    "benchmarks.train_step_vs_torch": "| model | batch | JAX step ms | PyTorch step ms |",
    "benchmarks.diagnostics_vs_torch": "| quantity | JAX ms | PyTorch ms | JAX/PyTorch | notes |",
    "benchmarks.peers": ("| diagnostic | invmeasure ms | invmeasure first call s | PyHessian ms "
                         "| eigenthings ms | invmeasure/PyHessian | invmeasure/eigenthings "
                         "| HVPs invmeasure / PyHessian / eigenthings | invmeasure error "
                         "| PyHessian error | eigenthings error | notes |"),
    "benchmarks.run_overhead": "| tracked at every step | ms per step | vs bare step |",
    "benchmarks.scaling": "| devices | step ms | step vs 1 device |",
    "benchmarks.memory": "| K | driver: minibatches per call | driver: temporaries |",
    "benchmarks.input_pipeline": "| config | batch | device-resident ms/step |",
    "benchmarks.loop_lowering": "| variant | median ms | vs (a) |",
    "benchmarks.loop_driving": "| model | function | n | first call s | ms per unit |",
    "benchmarks.loop_choices": "| choice | variant | ms | compile s | notes |",
    "benchmarks.per_step": "| model | tracked at every step | ms per step | vs bare step |",
    # With the cockpit extra installed its first table checks the agreement with Cockpit
    # (the script fails if any quantity defined alike differs by more than 1e-4).
    "benchmarks.cockpit_peer": "overhead every step: economy ",
    "benchmarks.accelerator": "| program | global batch | throughput | FLOP rate |",
}


def _run(module: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, "--quick"], cwd=ROOT, env=_ENV,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def results(request):
  """Every selected script's finished process (all but those `-k` deselects), started two
  at a time."""
  selected = {item.callspec.params["module"] for item in request.session.items
              if item.module is request.module}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {module: pool.submit(_run, module) for module in SCRIPTS if module in selected}
    yield {module: future.result() for module, future in futures.items()}


@pytest.mark.parametrize("module", SCRIPTS)
def test_quick_run_prints_its_table(results, module: str) -> None:
  proc = results[module]
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert SCRIPTS[module] in proc.stdout, proc.stdout[-3000:]
  assert "load" in proc.stdout.splitlines()[0], "the machine line comes first"
