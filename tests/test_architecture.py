"""The shape of the package: layers point one way, functions fit on a
screen, nothing stored is a pickle, the repository stands on its own."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autontk"

MAX_LINES = 80
"""Longest function without a ``# long function: <why>`` comment."""

OPTIONAL_IMPORTS = {
    "matplotlib": "the plot extra",
    "sklearn": "scikit-learn takes seconds to import; fitted on demand",
    "psutil": "optional: a better reading of free memory",
    "flax": "optional model library",
    "equinox": "optional model library",
    "haiku": "optional model library",
}
"""Modules a function may import lazily, and why."""


def _sources():
  return sorted(PACKAGE.rglob("*.py"))


def _functions(tree):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def test_import_layers_and_no_cycles():
  """The contracts in pyproject.toml (import-linter): the package's layers,
  the auto and cost-model layers, and no cycle between sibling modules."""
  cli = pytest.importorskip("importlinter.cli")
  assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"),
                          no_cache=True) == 0


def test_no_function_local_imports_of_autontk_or_required_packages():
  """A function-local import of a package module hides a cycle; of a
  required dependency, a cost paid on a hot path. Optional libraries (and
  slow-to-import ones) are the exception, each with its reason above."""
  offenders = []
  for path in _sources():
    for fn in _functions(ast.parse(path.read_text())):
      for node in ast.walk(fn):
        if isinstance(node, ast.ImportFrom):
          names = [("." * node.level) + (node.module or "")]
        elif isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        else:
          continue
        for name in names:
          if name.split(".")[0] not in OPTIONAL_IMPORTS:
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                             f"{fn.name} imports {name}")
  assert not offenders, "\n".join(offenders)


def test_functions_fit_on_a_screen():
  offenders = []
  for path in _sources():
    lines = path.read_text().splitlines()
    for fn in _functions(ast.parse("\n".join(lines))):
      length = fn.end_lineno - fn.lineno + 1
      first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
      above = lines[first - 2] if first >= 2 else ""
      if length > MAX_LINES and "# long function:" not in above:
        offenders.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} "
                         f"({length} lines)")
  assert not offenders, "\n".join(offenders)


def test_nothing_stored_is_a_pickle():
  for path in _sources():
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""])
        assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle")
                       for n in names), path


_OUTSIDE = re.compile(r"\bissue[s]? #?\d|DESIGN\.md|\.\./shared|/work/")


def test_the_repository_stands_on_its_own():
  """Code, docs and benchmark sources cite no file outside the repository
  and no issue number: what they need lives in docs/."""
  paths = (_sources() + sorted((ROOT / "docs").rglob("*.md")) +
           sorted((ROOT / "bench").rglob("*.py")) +
           sorted((ROOT / "examples").rglob("*.py")) +
           [ROOT / "README.md", ROOT / "bench" / "README.md"])
  offenders = [f"{p.relative_to(ROOT)}: {m.group(0)!r}"
               for p in paths if p.exists()
               for m in _OUTSIDE.finditer(p.read_text())]
  assert not offenders, "\n".join(offenders)
