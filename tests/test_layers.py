"""Imports point down the layers (DESIGN.md): diagnostics, models, data, training, analysis,
studies, claims; `invmeasure.errors` is the ground floor every layer may use."""

import ast
import pathlib

import invmeasure

LAYERS = ("errors", "diagnostics", "models", "data", "training", "analysis", "studies",
          "claims")
PACKAGE = pathlib.Path(invmeasure.__file__).parent


def _layer(module: str) -> int | None:
  """The layer of `invmeasure.<layer>...`, or None for other modules."""
  parts = module.split(".")
  if parts[0] != "invmeasure" or len(parts) < 2:
    return None
  return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _imports(tree: ast.AST) -> list[str]:
  names = []
  for node in ast.walk(tree):  # function-level imports count too
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
  return names


def test_no_module_imports_from_a_layer_above_its_own():
  upward = []
  for file in sorted(PACKAGE.rglob("*.py")):
    own = _layer("invmeasure." + ".".join(file.relative_to(PACKAGE).with_suffix("").parts))
    if own is None:
      continue
    for name in _imports(ast.parse(file.read_text(), str(file))):
      layer = _layer(name)
      if layer is not None and layer > own:
        upward.append(f"{file.relative_to(PACKAGE.parent)} imports {name}")
  assert not upward, "\n".join(upward)
