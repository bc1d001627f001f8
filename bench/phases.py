"""Where structured derivatives' time goes: cotangents against pair products.

The method runs its probing passes (every use's cotangent, one reverse pass
per output entry and example — what neural-tangents' method 3 runs too)
inside the named scope ``structured_cotangents`` and its pair products
inside ``structured_pairs``. :func:`split` traces a few calls of a jitted
program with ``jax.profiler``, sums each operation's time by the scope its
compiled instruction carries, and returns the shares. A trace inflates
small operations, so the shares, not the traced times, are the result.

>>> sorted(PHASES)
['cotangents', 'pairs']
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
from typing import Any, Callable

import jax

import autontk

PHASES = {"cotangents": "structured_cotangents",
          "pairs": "structured_pairs"}


def _scope_of_instruction(hlo_text: str) -> dict[str, str]:
  """Instruction name → phase, from the compiled module's metadata."""
  out = {}
  entry = hlo_text[hlo_text.find("ENTRY"):]
  for line in entry.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if not m:
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    scope = name.group(1) if name else ""
    out[m.group(1)] = next((k for k, v in PHASES.items() if v in scope),
                           "other")
  return out


def _event_times(trace_dir: str) -> dict[str, float]:
  """Summed duration (µs) per event name of the trace's perfetto file."""
  path = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
  with gzip.open(path[0]) as fh:
    events = json.load(fh)["traceEvents"]
  total: dict[str, float] = collections.defaultdict(float)
  for e in events:
    if e.get("ph") == "X":
      total[e["name"]] += e.get("dur", 0.0)
  return total


def split(fn: Callable, args: tuple, calls: int = 10
          ) -> dict[str, Any] | None:
  """Shares of ``fn(*args)``'s compiled operations' time per phase.

  Args:
    fn: a ``jax.jit``-ed function (compiled once: its executable is run
      and its HLO read).
    args: its arguments.
    calls: traced calls (after two untraced ones).

  Returns:
    ``{"cotangents": share, "pairs": share, "other": share}`` summing to 1,
    or ``None`` when the trace holds none of the program's operations.
  """
  compiled = fn.lower(*args).compile()  # its HLO names what is profiled
  scopes = _scope_of_instruction(compiled.as_text())
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    try:
      for _ in range(calls):
        jax.block_until_ready(compiled(*args))
    finally:
      jax.profiler.stop_trace()
    times = _event_times(d)
  per: dict[str, float] = collections.defaultdict(float)
  for name, t in times.items():
    if name in scopes:
      per[scopes[name]] += t
  total = sum(per.values())
  if not total:
    return None
  return {k: per.get(k, 0.0) / total for k in (*PHASES, "other")}


def split_ntk(ntk: Callable, x1: Any, x2: Any, params: Any
              ) -> dict[str, Any]:
  """:func:`split` of ``ntk(x1, x2, params)`` under ``jax.jit`` (with the
  options autontk compiles a direct call with), or
  ``{"error": ...}`` (a profile is optional: it never stops a suite)."""
  try:
    return split(jax.jit(lambda a, b, p: ntk(a, b, p),
                         compiler_options=autontk.compiler_options()),
                 (x1, x2, params)) or {"error": "empty trace"}
  except Exception as e:  # noqa: BLE001 - recorded, not fatal
    return {"error": f"{type(e).__name__}: {e}"[:200]}
