"""The library's annotations hold: mypy finds no error in `invmeasure/diagnostics`, and the
package ships the `py.typed` marker that shows them to other projects' type checkers."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error_in_the_diagnostics():
  proc = subprocess.run([sys.executable, "-m", "mypy", "invmeasure/diagnostics"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_the_package_is_marked_typed():
  assert (ROOT / "invmeasure" / "py.typed").exists()
  assert 'invmeasure = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
