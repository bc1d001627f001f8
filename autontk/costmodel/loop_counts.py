"""The loops of a program: how many times each of its operations runs.

XLA's cost analysis counts a loop body once, so a ``lax.scan`` of 20 steps
reports the work of one step, and nothing in it says how many kernels run
or how many sequential iterations the device steps through. This module
reads the loop structure of a program's text and gives every operation its
*multiplicity*: the product of the trip counts of the loops around it.

Two texts are read:

* **StableHLO** (``Lowered.as_text()``): functions, ``stablehlo.while``
  with ``cond``/``do`` regions, ``stablehlo.case``/``if`` branches and
  ``func.call``. The trip count is read from the condition: a
  ``compare LT`` (or ``LE``, ``GT``, ``GE``) of a loop-carried counter
  against a constant or another loop-carried value, both starting from
  constants, which is what ``lax.scan``, ``lax.map`` and ``fori_loop``
  with static bounds lower to (step 1).
* **HLO** (``Compiled.as_text()``): computations, ``while`` (its trip count
  from XLA's ``known_trip_count`` backend annotation), ``conditional`` and
  ``call``. Instructions of fused computations, reducers and other applied
  computations are not operations of their own: they belong to the fusion
  or reduce that calls them.

A loop whose trip count cannot be read (a data-dependent ``while_loop``)
counts once, as in XLA's analysis, and is reported in
:attr:`LoopStructure.unknown_trip_loops`. A conditional's branches each run
``1 / branches`` times (one of them runs). The condition of a loop runs
once more than its body.

Pure text readers: no JAX, and nothing here raises on text it does not
understand (unknown structure reads as straight-line code).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator


@dataclasses.dataclass(frozen=True)
class Op:
  """One operation and how often it runs.

  Attributes:
    line: its line of program text (stripped).
    opcode: ``"stablehlo.dot_general"``, ``"fusion"``, ``"custom-call"``...
    times: runs per program run (trip counts of enclosing loops applied).
    launched: the runtime dispatches it on its own; ``False`` inside a
      computation compiled into one kernel (XLA:CPU's small calls).
    instruction: the parsed HLO instruction (compiled text only).
  """

  line: str
  opcode: str
  times: float
  launched: bool = True
  instruction: "Instruction | None" = None


@dataclasses.dataclass(frozen=True)
class LoopStructure:
  """The operations of a program with their multiplicities.

  Attributes:
    ops: every operation outside applied computations (fusion bodies,
      reducers), each with its multiplicity; function calls are expanded
      at their call site, control-flow operations themselves are left out.
    loop_iterations: sequential loop iterations the runtime steps through
      per run: each loop's trip count times the multiplicity of the loop
      (nested loops multiply); loops compiled into one kernel (XLA:CPU
      small calls) are left out.
    loops: loops found (each counted once, however often it runs).
    unknown_trip_loops: loops whose trip count could not be read.
  """

  ops: tuple[Op, ...] = ()
  loop_iterations: float = 0.0
  loops: int = 0
  unknown_trip_loops: int = 0


# StableHLO ------------------------------------------------------------------

_SHLO_OPCODE = re.compile(r'"?\b([a-z_]+\.[a-z_0-9.]+)\b"?')
_FUNC = re.compile(r"func\.func\s+(?:public\s+|private\s+)?@([\w.$-]+)")
_CALL = re.compile(r"(?:^|=\s*)(?:func\.)?call\s+@([\w.$-]+)")
_CONSTANT = re.compile(r"(%[\w.$-]+)\s*=\s*stablehlo\.constant\s+dense<(-?\d+)>"
                       r"\s*:\s*tensor<[su]?i\d+>")
_ITER_ARG = re.compile(r"(%iterArg[\w$-]*)\s*=\s*(%[\w#.$-]+)")
_COMPARE = re.compile(r"stablehlo\.compare\s+(LT|LE|GT|GE),\s*(%[\w#.$-]+),"
                      r"\s*(%[\w#.$-]+)")
_APPLIED = ("reduce", "reduce_window", "select_and_scatter", "scatter",
            "sort", "map", "all_reduce", "reduce_scatter")
"""StableHLO ops whose regions are per-element functions, not code."""


@dataclasses.dataclass
class _Region:
  """A block of StableHLO: its items (op lines and nested control flow)."""

  kind: str  # "func", "inline", "applied", "cond", "body", "branch"
  items: list = dataclasses.field(default_factory=list)
  constants: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Control:
  """A ``while`` (regions cond, body) or ``case``/``if`` (branches)."""

  kind: str  # "while" or "case"
  line: str
  regions: list = dataclasses.field(default_factory=list)
  trips: int | None = None


_RESULT = re.compile(r"%[\w#:.$-]+\s*=")


def _shlo_opcode(line: str) -> str:
  body = line.split("=", 1)[1] if _RESULT.match(line) else line
  m = _SHLO_OPCODE.search(body)
  return m.group(1) if m else body.split(" ", 1)[0]


def _opened(line: str, parent: _Region) -> _Region:
  """The region a line ending in ``{`` opens, attached to ``parent``."""
  if line.startswith("cond"):  # the pretty form: the while line precedes
    header = parent.items.pop() if parent.items and isinstance(
        parent.items[-1], str) else ""
    control = _Control("while", header)
    parent.items.append(control)
    region = _Region("cond")
    control.regions.append(region)
    return region
  opcode = _shlo_opcode(line)
  if opcode.split(".")[-1] in ("case", "if", "while"):
    kind = "while" if opcode.endswith("while") else "case"
    control = _Control(kind, line)
    parent.items.append(control)
    region = _Region("cond" if kind == "while" else "branch")
    control.regions.append(region)
    return region
  kind = "applied" if opcode.split(".")[-1] in _APPLIED else "inline"
  region = _Region(kind)
  parent.items.append(region)
  return region


def _parse_stablehlo(text: str) -> dict[str, _Region]:
  """Functions by name, each a tree of regions."""
  funcs: dict[str, _Region] = {}
  stack: list[_Region] = [_Region("inline")]
  for raw in text.splitlines():
    line = raw.strip()
    if not line:
      continue
    if line.startswith("}"):
      closed = stack.pop() if len(stack) > 1 else stack[-1]
      if line.endswith("{"):  # "} do {" or "}, {": the control's next region
        control = stack[-1].items[-1] if stack[-1].items else None
        if isinstance(control, _Control):
          region = _Region("body" if control.kind == "while" else "branch")
          control.regions.append(region)
          stack.append(region)
        else:  # an op with several regions (select_and_scatter)
          region = _Region(closed.kind)
          stack[-1].items.append(region)
          stack.append(region)
      continue
    if line.endswith("{"):
      m = _FUNC.search(line)
      if m:
        region = funcs[m.group(1)] = _Region("func")
      elif line.startswith("module"):
        region = _Region("inline")
      else:
        if not line.startswith("cond") and not _opens_control(line):
          stack[-1].items.append(line)
        region = _opened(line, stack[-1])
      stack.append(region)
      continue
    m = _CONSTANT.match(line)
    if m:
      stack[-1].constants[m.group(1)] = int(m.group(2))
    stack[-1].items.append(line)
    if stack[-1].kind == "cond":
      _read_trips(line, stack)
  return funcs


def _opens_control(line: str) -> bool:
  """An op line that opens its own regions (``case``, ``while`` generic
  form): recorded as a control, not as an op."""
  return _shlo_opcode(line).split(".")[-1] in ("case", "if", "while")


def _lookup(name: str, stack: list[_Region]) -> int | None:
  for region in reversed(stack):
    if name in region.constants:
      return region.constants[name]
  return None


def _read_trips(line: str, stack: list[_Region]) -> None:
  """Sets the enclosing while's trip count from its condition's compare."""
  m = _COMPARE.search(line)
  if m is None or len(stack) < 2:
    return
  parent = stack[-2]
  control = parent.items[-1] if parent.items else None
  if not isinstance(control, _Control) or control.trips is not None:
    return
  inits = dict(_ITER_ARG.findall(control.line))

  def value(name: str) -> int | None:
    if name in inits:
      return _lookup(inits[name], stack[:-1])
    return _lookup(name, stack)

  a, b = value(m.group(2)), value(m.group(3))
  if a is None or b is None:
    return
  trips = {"LT": b - a, "LE": b - a + 1, "GT": a - b, "GE": a - b + 1}
  control.trips = max(trips[m.group(1)], 0)


def stablehlo_loops(text: str) -> LoopStructure:
  """The :class:`LoopStructure` of a StableHLO module (lowered program).

  >>> s = stablehlo_loops('''
  ... func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {
  ...   %c = stablehlo.constant dense<0> : tensor<i32>
  ...   %0:2 = stablehlo.while(%iterArg = %c, %iterArg_0 = %arg0) : tensor<i32>, tensor<4xf32>
  ...   cond {
  ...     %c_1 = stablehlo.constant dense<5> : tensor<i32>
  ...     %1 = stablehlo.compare LT, %iterArg, %c_1, SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
  ...     stablehlo.return %1 : tensor<i1>
  ...   } do {
  ...     %1 = stablehlo.tanh %iterArg_0 : tensor<4xf32>
  ...     stablehlo.return %iterArg, %1 : tensor<i32>, tensor<4xf32>
  ...   }
  ...   return %0#1 : tensor<4xf32>
  ... }''')
  >>> s.loop_iterations, [o.times for o in s.ops if o.opcode == "stablehlo.tanh"]
  (5.0, [5.0])
  """
  funcs = _parse_stablehlo(text)
  main = funcs.get("main") or next(iter(funcs.values()), None)
  if main is None:
    return LoopStructure()
  walk = _Walk(funcs)
  walk.region(main, 1.0, depth=0)
  return walk.result()


class _Walk:
  """Expands calls and loops of parsed StableHLO from ``main``."""

  def __init__(self, funcs: dict[str, _Region]):
    self.funcs = funcs
    self.ops: list[Op] = []
    self.iterations = 0.0
    self.loops: set[int] = set()
    self.unknown: set[int] = set()

  def region(self, region: _Region, times: float, depth: int) -> None:
    if region.kind == "applied" or depth > 64:
      return
    for item in region.items:
      if isinstance(item, _Region):
        self.region(item, times, depth + 1)
      elif isinstance(item, _Control):
        self.control(item, times, depth)
      else:
        self.line(item, times, depth)

  def line(self, line: str, times: float, depth: int) -> None:
    call = _CALL.search(line)
    if call is not None:
      callee = self.funcs.get(call.group(1))
      if callee is not None:
        self.region(callee, times, depth + 1)
      return
    opcode = _shlo_opcode(line)
    if opcode in ("stablehlo.return", "func.return") or line.startswith(
        "return"):
      return
    self.ops.append(Op(line, opcode, times))

  def control(self, control: _Control, times: float, depth: int) -> None:
    if control.kind == "case":
      n = max(len(control.regions), 1)
      for r in control.regions:
        self.region(r, times / n, depth + 1)
      return
    self.loops.add(id(control))
    trips = control.trips
    if trips is None:
      self.unknown.add(id(control))
      trips = 1
    self.iterations += times * trips
    for r in control.regions:
      self.region(r, times * (trips + 1 if r.kind == "cond" else trips),
                  depth + 1)

  def result(self) -> LoopStructure:
    return LoopStructure(tuple(self.ops), self.iterations, len(self.loops),
                         len(self.unknown))


# HLO (compiled) -------------------------------------------------------------

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_HLO_OPCODE = re.compile(r"(?:^|[\s)}\]])([a-z][a-z0-9-]*)\(")
_TRIPS = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_REF = r"%?([^\s,}]+)"
_CONDITION = re.compile(r"condition=" + _REF)
_BODY = re.compile(r"\bbody=" + _REF)
_TO_APPLY = re.compile(r"to_apply=" + _REF)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRUE_FALSE = re.compile(r"(?:true|false)_computation=" + _REF)


Computations = dict[str, list["Instruction"]]
"""Parsed HLO: the instructions of each computation, by its name."""


def hlo_computations(text: str) -> tuple[Computations, str | None]:
  """``({computation name: instructions}, entry name)`` of HLO text."""
  comps: Computations = {}
  entry, current = None, None
  for raw in text.splitlines():
    line = raw.strip()
    if not line:
      continue
    if line.startswith("}"):
      current = None
      continue
    inst = hlo_instruction(line) if current is not None else None
    if inst is not None:
      comps[current].append(inst)
      continue
    m = _COMPUTATION.match(line)
    if m and " = " not in line.split("(", 1)[0]:
      current = m.group(2)
      comps[current] = []
      if m.group(1):
        entry = current
  return comps, entry


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction line, split.

  Attributes:
    name: its name, without ``%``.
    type: its result type (``f32[8,64]{1,0}``, or a tuple of them).
    opcode: ``fusion``, ``dot``, ``while``...
    operands: the names of its operands, in order.
    attributes: the text after its operand list.
    line: the whole line.
  """

  name: str
  type: str
  opcode: str
  operands: tuple[str, ...]
  attributes: str
  line: str = ""


def hlo_instruction(line: str) -> Instruction | None:
  """The parts of an HLO instruction line (``None`` if it is not one)."""
  m = _INSTRUCTION.match(line)
  if m is None:
    return None
  rest = m.group(2).lstrip()
  type_end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.find(" ")
  if type_end <= 0:
    return None
  op = _HLO_OPCODE.search(" " + rest[type_end:])
  if op is None:
    return None
  start = type_end + op.end() - 2  # the operand list's "(" in rest
  end = rest.find(")", start)
  if end < 0 or "(" in rest[start + 1:end]:  # typed tuple operands
    end = _closing(rest, start)
  operands = tuple(_OPERAND.findall(rest, start, end))
  return Instruction(m.group(1).lstrip("%"), rest[:type_end].strip(),
                     op.group(1), operands, rest[end + 1:], line)


_OPERAND = re.compile(r"%([^\s,()]+)")


def _closing(text: str, start: int) -> int:
  """Index of the parenthesis closing the one at ``start``."""
  depth = 0
  for i in range(start, len(text)):
    depth += text[i] == "("
    depth -= text[i] == ")"
    if depth == 0:
      return i
  return len(text)


def hlo_opcode(line: str) -> str:
  """The opcode of an HLO instruction line (``""`` if none)."""
  inst = hlo_instruction(line)
  return inst.opcode if inst is not None else ""


def hlo_loops(text: str) -> LoopStructure:
  """The :class:`LoopStructure` of compiled HLO text (``Compiled.as_text``).

  Operations are the instructions of the entry computation and of the
  computations it reaches through ``while``, ``conditional`` and ``call``.
  """
  return hlo_loops_of(*hlo_computations(text))


def hlo_loops_of(comps: Computations, entry: str | None) -> LoopStructure:
  """:func:`hlo_loops` of text already split by :func:`hlo_computations`."""
  if entry is None:
    return LoopStructure()
  ops: list[Op] = []
  counts = {"iterations": 0.0, "loops": 0, "unknown": 0}
  _walk_hlo(comps, entry, 1.0, True, ops, counts, 0)
  return LoopStructure(tuple(ops), counts["iterations"], counts["loops"],
                       counts["unknown"])


def _walk_hlo(comps, name, times, launched, ops, counts, depth) -> None:
  if depth > 64:
    return
  for inst in comps.get(name, ()):
    opcode, attrs = inst.opcode, inst.attributes
    inner = launched and not (opcode == "call" and _SMALL_CALL in attrs)
    for callee, factor in _hlo_callees(attrs, opcode, counts, times, inner):
      _walk_hlo(comps, callee, times * factor, inner, ops, counts, depth + 1)
    if opcode not in ("while", "conditional", "call") or (
        launched and not inner):
      ops.append(Op(inst.line, opcode, times, launched, inst))


_SMALL_CALL = 'xla_cpu_small_call="true"'


def _hlo_callees(line: str, opcode: str, counts, times, launched: bool
                 ) -> Iterator[tuple[str, float]]:
  """Computations a control-flow instruction runs, with their factors."""
  if opcode == "while":
    m = _TRIPS.search(line)
    trips = int(m.group(1)) if m else 1
    counts["loops"] += 1
    counts["unknown"] += m is None
    counts["iterations"] += times * trips if launched else 0.0
    for pattern, factor in ((_CONDITION, trips + 1), (_BODY, trips)):
      ref = pattern.search(line)
      if ref:
        yield ref.group(1), factor
  elif opcode == "conditional":
    m = _BRANCHES.search(line)
    names = ([n.strip().lstrip("%") for n in m.group(1).split(",")] if m
             else _TRUE_FALSE.findall(line))
    for n in names:
      yield n, 1.0 / len(names)
  elif opcode == "call":
    ref = _TO_APPLY.search(line)
    if ref:
      yield ref.group(1), 1.0
