"""The shape of the package: layers point one way, functions fit on a
screen, nothing stored is a pickle, every method and rule module is
imported, the repository stands on its own (bench/ included), and the
architecture page says what the code does."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import sys
import tomllib

import pytest

import autontk  # noqa: F401  (imports every method and rule)

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
  # import-linter is a test dependency: missing, this fails, never skips.
  from importlinter import cli
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


# The repository stands on its own ---------------------------------------------
#
# What a reader needs lives in the repository: no reference to an issue or a
# pull request, to a commit, to the machines and tools the code was developed
# with, or to a path outside the repository.

_HISTORY = {
    "an issue or pull request": re.compile(
        r"\bissues?\s*#?\s*\d+|\b(?:the|this|that)\s+issue\b|"
        r"\bgh-\d+|/(?:issues|pull)/\d+|(?-i:\bPR\s*#?\d+)|"
        r"\b(?:fix(?:es|ed)?|close[sd]?|resolve[sd]?|see|cf\.?)\s+#\d+",
        re.IGNORECASE),
    "a commit": re.compile(r"\bcommit\s+[0-9a-f]{7,40}\b", re.IGNORECASE),
    "the development machines and their tools": re.compile(
        r"\$OUT\b|\bfiles_(?:at|fetch)\b|\bgive_back\b|\bbudget_left\b|"
        r"\bdevice (?:tool|notes|machine|time)\b|\blent (?:GPU )?machine\b|"
        r"\bdevelopment machine\b|\bworktree\b|\bbash_jobs\b|"
        r"\.library/|\bnotes/common", re.IGNORECASE),
    "a file outside the repository": re.compile(
        r"DESIGN\.md|STYLE\.md|\.\./shared|/work/|/home/\w|/Users/\w|"
        r"/root/\w"),
}
"""What may not appear in the repository's code and docs, by kind."""

_BARE_HASH = re.compile(
    r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
"""A commit named by its hash alone: looked for in prose (not in code,
where hexadecimal literals are no history)."""

_RELATIVE = re.compile(r"(?:\.\./)+[\w.-]+")


def _texts(*tops: str, suffixes=(".py", ".md", ".sh", ".txt", ".yml")):
  out = []
  for top in tops:
    path = ROOT / top
    if path.is_file():
      out.append(path)
    elif path.is_dir():
      out += sorted(p for p in path.rglob("*")
                    if p.is_file() and p.suffix in suffixes)
  return out


def _history_and_outside_references(paths):
  """``path:line: kind: 'text'`` for every reference of ``_HISTORY``, and
  every relative path that leaves the repository."""
  offenders = []
  for path in paths:
    text = path.read_text()
    found = [(kind, m) for kind, pattern in _HISTORY.items()
             for m in pattern.finditer(text)]
    if path.suffix in (".md", ".txt"):
      found += [("a commit", m) for m in _BARE_HASH.finditer(text)]
    found += [("a file outside the repository", m)
              for m in _RELATIVE.finditer(text)
              if ROOT not in (path.parent / m.group(0)).resolve().parents]
    seen = set()
    for kind, m in found:
      line = text.count("\n", 0, m.start()) + 1
      if (line, kind) not in seen:
        seen.add((line, kind))
        offenders.append(f"{path.relative_to(ROOT)}:{line}: {kind}: "
                         f"{m.group(0)!r}")
  return offenders


def test_the_repository_stands_on_its_own():
  """Code, docs, examples and tests cite no issue, commit, development
  machine or file outside the repository: what they need lives in docs/."""
  paths = _texts("autontk", "docs", "examples", "tests", "cache",
                 "README.md", "mkdocs.yml", "pyproject.toml", ".ci/run")
  this = pathlib.Path(__file__).resolve()  # names the patterns themselves
  offenders = _history_and_outside_references(p for p in paths if p != this)
  assert not offenders, "\n".join(offenders)


def test_the_guard_catches_each_kind_of_reference():
  cases = ["see issue #12", "issue 3's target", "the issue's bound", "GH-7",
           "PR #4", "fixes #45", "github.com/o/r/pull/9", "at commit 0c7a501",
           "copies to $OUT/results", "the device tool", "the lent GPU machine",
           "on the 2-core CPU development machine", "../shared/DESIGN.md",
           "/work/main/x.py"]
  for text in cases:
    assert any(p.search(text) for p in _HISTORY.values()), text
  assert _BARE_HASH.search("run on 839f94c")
  for text in ["a 64-digit digest " + "ab" * 32, "x = y  # 2 blocks",
               "pick #1 by time", "trace_axes=(0, -1)", "deadbeef_count",
               "issue a warning", "color #1f77b4", "pr2 = p[2]"]:
    assert not any(p.search(text) for p in _HISTORY.values()), text
  assert not _BARE_HASH.search("a digest " + "ab" * 32)
  outside = ROOT / "docs" / "x.md"
  assert ROOT not in (outside.parent / "../../elsewhere").resolve().parents
  assert ROOT in (outside.parent / "../autontk").resolve().parents


# bench/ ------------------------------------------------------------------------
#
# The benchmark package follows the package's rules: no import cycle, no
# function-local import of its own modules, no history or outside reference.

BENCH = ROOT / "bench"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _imported_modules(node, module: str, is_package: bool):
  """Module names an import statement names, relative ones resolved."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  if node.level:
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    stem = ".".join(base + ([node.module] if node.module else []))
  else:
    stem = node.module or ""
  return [f"{stem}.{a.name}" for a in node.names] + [stem]


def _dynamic_import(node) -> bool:
  """``importlib.import_module("x")`` or ``__import__("x")``."""
  if not (isinstance(node, ast.Call) and node.args and
          isinstance(node.args[0], ast.Constant) and
          isinstance(node.args[0].value, str)):
    return False
  f = node.func
  return ((isinstance(f, ast.Attribute) and f.attr == "import_module") or
          (isinstance(f, ast.Name) and f.id in ("import_module",
                                                "__import__")))


def _bench_imports():
  """``{module: [(imported bench module, line, function or None)]}``."""
  paths = sorted(BENCH.rglob("*.py"))
  modules = {_module_name(p): p for p in paths}
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text())
    local = {id(n): fn.name for fn in _functions(tree) for n in ast.walk(fn)}
    edges = []
    for node in ast.walk(tree):
      if _dynamic_import(node):
        targets = [node.args[0].value]
      elif isinstance(node, (ast.Import, ast.ImportFrom)):
        targets = _imported_modules(node, name, path.name == "__init__.py")
      else:
        continue
      # ``from bench import kernels`` imports bench.kernels; the package
      # itself counts only where no submodule is named.
      inside = [t for t in targets[:-1] if t in modules] or [
          t for t in targets[-1:] if t in modules]
      edges += [(t, node.lineno, local.get(id(node)))
                for t in inside if t != name]
    graph[name] = edges
  return graph


def _cycles(graph):
  """The import cycles of ``graph`` (strongly connected components of more
  than one module, or a module importing itself), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w, _, _ in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder():
  graph = {"a": [("b", 1, None)], "b": [("c", 1, "f")], "c": [("a", 1, None)],
           "d": [("a", 1, None)]}
  assert _cycles(graph) == [["a", "b", "c"]]
  assert _cycles({"a": [("b", 1, None)], "b": []}) == []


def test_bench_has_no_import_cycle():
  """Function-local imports included: a cycle through them is still one."""
  cycles = _cycles(_bench_imports())
  assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_bench_has_no_function_local_imports_of_its_own_modules():
  offenders = [f"{name}:{line} {fn} imports {target}"
               for name, edges in sorted(_bench_imports().items())
               for target, line, fn in edges if fn is not None]
  assert not offenders, "\n".join(offenders)


def test_bench_stands_on_its_own():
  offenders = _history_and_outside_references(_texts("bench"))
  assert not offenders, "\n".join(offenders)


# The architecture page says what the code does ---------------------------------

_PAGE = ROOT / "docs" / "architecture.md"


def _layers_contracts():
  """``{container: layers}`` of the layers contracts in pyproject.toml."""
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())
  return {c["containers"][0]: c["layers"]
          for c in config["tool"]["importlinter"]["contracts"]
          if c["type"] == "layers"}


def test_the_architecture_page_gives_the_contracts_layer_orders():
  """Inside auto/ and costmodel/, the page's order is pyproject.toml's."""
  page = " ".join(_PAGE.read_text().split())
  for container, layers in _layers_contracts().items():
    if container == "autontk":
      continue
    order = " > ".join(f"`{layer}`" for layer in layers)
    assert order in page, f"{container}: the page should say {order}"


def test_the_architecture_page_gives_the_package_layers_in_order():
  """The page's layer table names every module of the package contract,
  each layer in a row no higher than the layers below it."""
  text = _PAGE.read_text()
  table = text[text.index("## Layers"):text.index("## How a call flows")]
  row_of = {}
  for i, line in enumerate(l for l in table.splitlines()
                           if l.startswith("|")):
    cells = line.split("|")
    if len(cells) > 2:
      for name in re.findall(r"`([\w/]+?)(?:\.py|/)?`", cells[2]):
        row_of.setdefault(name, i)
  layers = _layers_contracts()["autontk"]
  rows = []
  for layer in layers:
    names = [n.strip() for n in layer.split("|")]
    missing = [n for n in names if n not in row_of]
    assert not missing, f"the layer table lacks {missing}"
    rows.append((min(row_of[n] for n in names),
                 max(row_of[n] for n in names), layer))
  for (_, low, upper), (high, _, lower) in zip(rows, rows[1:]):
    assert low <= high, f"{upper!r} is listed below {lower!r}"


def _repository_files():
  return {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
          if ".git" not in p.parts and ".venv" not in p.parts}


def test_the_architecture_page_names_files_that_exist():
  """Every module, folder or file the page names (``x.py``, ``dir/``,
  ``x.py::name``) exists: a rename that forgets the page fails here."""
  files = _repository_files()
  missing = []
  for name in re.findall(r"`([\w./-]+?\.(?:py|md|toml)|[\w/]+/)(?:::\w+)?`",
                         _PAGE.read_text()):
    name = name.rstrip("/")
    if not any(f == name or f.endswith("/" + name) for f in files):
      missing.append(name)
  assert not missing, f"docs/architecture.md names missing files: {missing}"


def test_the_architecture_page_names_every_re_exporting_subpackage():
  text = " ".join(_PAGE.read_text().split())
  paragraph = text[text.index("The public API is"):]
  paragraph = paragraph[:paragraph.index("## ")]
  re_exporting = sorted(
      init.parent.name for init in PACKAGE.glob("*/__init__.py")
      if re.search(r"^from autontk\.\S+ import (\w+) as \1$",
                   init.read_text(), re.MULTILINE))
  assert re_exporting, "no subpackage re-exports: update the page"
  missing = [p for p in re_exporting if f"`autontk.{p}`" not in paragraph]
  assert not missing, f"the page omits the re-exports of {missing}"


EXTENSION_FOLDERS = ("methods", "methods/structured/rules")
"""Folders whose modules register themselves when imported (methods, rules):
one left out of its package's imports would be silently missing."""


def test_every_registering_module_is_imported_by_the_package():
  missing = []
  for folder in EXTENSION_FOLDERS:
    for path in sorted((PACKAGE / folder).glob("*.py")):
      if path.stem == "__init__":
        continue
      name = "autontk." + ".".join(
          path.relative_to(PACKAGE).with_suffix("").parts)
      if name not in sys.modules:
        missing.append(name)
  assert not missing, f"not imported by their package: {missing}"


_CROSS_REFERENCE = re.compile(
    r":(?:mod|class|func|meth|data|attr|exc):`~?(autontk(?:\.\w+)+)`")


def _resolves(name: str) -> bool:
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return False
    return True
  return False


def _unresolved_cross_references(paths):
  return [f"{p.relative_to(ROOT)}: {m.group(1)}" for p in paths
          for m in _CROSS_REFERENCE.finditer(p.read_text())
          if not _resolves(m.group(1))]


def test_docstrings_cite_modules_and_names_that_exist():
  """A full ``autontk.…`` cross-reference in a docstring names a module or
  attribute that exists."""
  offenders = _unresolved_cross_references(_sources())
  assert not offenders, "\n".join(offenders)
