"""The public API of invmeasure.diagnostics: listed, documented and fully annotated."""

import inspect
import pathlib
import types
import warnings

import pytest

from invmeasure import diagnostics as dg

ROOT = pathlib.Path(__file__).resolve().parents[1]
PUBLIC = sorted(dg.__all__)
FUNCTIONS = [n for n in PUBLIC if inspect.isfunction(getattr(dg, n))]


def test_all_lists_every_public_name_once():
  assert len(PUBLIC) == len(set(PUBLIC))
  defined = {n for n, v in vars(dg).items()
             if not n.startswith("_") and not isinstance(v, types.ModuleType)}
  assert defined == set(PUBLIC)


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isclass(getattr(dg, n))
                                  or inspect.isfunction(getattr(dg, n))])
def test_documented(name):
  doc = inspect.getdoc(getattr(dg, name)) or ""
  # A NamedTuple without a docstring gets "Name(field, ...)" from Python.
  assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_fully_annotated(name):
  signature = inspect.signature(getattr(dg, name))
  missing = [p for p, v in signature.parameters.items() if v.annotation is inspect.Parameter.empty]
  assert not missing, f"{name}: parameters {missing} have no annotation"
  assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return type"


def test_readme_table_names_every_diagnostic():
  readme = (ROOT / "README.md").read_text()
  table = readme[readme.index("What each function returns:"):]
  table = table[:table.index("\n\n", table.index("| function |"))]
  missing = [n for n in FUNCTIONS if f"`{n}(" not in table]
  assert not missing, f"README's diagnostics table lacks {missing}"


def test_readme_example_runs_without_a_loop_warning(capsys):
  """The README's library example (K = 64, 100 iterations) on CPU: no CpuLoopWarning."""
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Using the library in another project"):]
  start = section.index("```python\n") + len("```python\n")
  code = section[start:section.index("\n```", start)]
  with warnings.catch_warnings():
    warnings.simplefilter("error", dg.CpuLoopWarning)
    exec(compile(code, "README.md", "exec"), {})
  printed = capsys.readouterr().out
  # One line per print call of the example, none of them NaN.
  assert len(printed.splitlines()) == code.count("print("), printed
  assert "nan" not in printed.lower(), printed
