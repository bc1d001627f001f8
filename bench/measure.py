"""One compiled call measured alone: first call, repeats, XLA cost readout.

Shared by autontk's runner and the neural-tangents peer, so it imports under
jax 0.4.23 (the peer's environment) and current JAX, and nothing of autontk.
Candidates compared with each other are then re-timed together by
:mod:`bench.timing`. ``cost_analysis()`` is a list of dicts on old JAX and
a dict on new JAX; values <= 0 or missing mean "unknown" (``None``).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class TimingPolicy:
  """How long to measure one callable.

  Attributes:
    min_repeats: timed calls at least (after the first, compiling call).
    max_repeats: timed calls at most.
    min_total_s: keep repeating until this much time was measured.
    max_total_s: stop repeating after this much measured time.
  """

  min_repeats: int = 3
  max_repeats: int = 30
  min_total_s: float = 0.5
  max_total_s: float = 5.0

  @classmethod
  def quick(cls) -> "TimingPolicy":
    return cls(min_repeats=2, max_repeats=15, min_total_s=0.3, max_total_s=3.0)

  @classmethod
  def full(cls) -> "TimingPolicy":
    return cls(min_repeats=5, max_repeats=50, min_total_s=1.0,
               max_total_s=10.0)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def block(x: Any) -> Any:
  return jax.block_until_ready(x)


def repeat(call: Callable[[], Any], policy: TimingPolicy) -> dict[str, Any]:
  """Median wall time of ``call()`` (already compiled), with repeats."""
  times: list[float] = []
  total = 0.0
  while len(times) < policy.max_repeats:
    t0 = time.perf_counter()
    block(call())
    dt = time.perf_counter() - t0
    times.append(dt)
    total += dt
    if len(times) >= policy.min_repeats and total >= policy.min_total_s:
      break
    if total >= policy.max_total_s and len(times) >= 1:
      break
  return {"median_s": statistics.median(times), "min_s": min(times),
          "repeats": len(times)}


def _first(analysis: Any) -> dict[str, Any] | None:
  if analysis is None:
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return analysis if isinstance(analysis, dict) else None


def _positive(v: Any) -> float | None:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if v > 0 else None


def cost_of(compiled: Any) -> dict[str, Any]:
  """FLOPs, bytes accessed, transcendentals and memory of a compiled fn."""
  out: dict[str, Any] = {"flops": None, "bytes_accessed": None,
                         "transcendentals": None, "peak_bytes": None,
                         "temp_bytes": None}
  try:
    a = _first(compiled.cost_analysis())
  except Exception:  # noqa: BLE001 - some backends do not implement it
    a = None
  if a:
    out["flops"] = _positive(a.get("flops"))
    out["bytes_accessed"] = _positive(a.get("bytes accessed"))
    out["transcendentals"] = _positive(a.get("transcendentals"))
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    m = None
  if m is not None:
    temp = getattr(m, "temp_size_in_bytes", None)
    out["temp_bytes"] = temp
    # peak_memory_in_bytes, where present, may leave out temporaries on CPU;
    # arguments + outputs + temporaries - aliased is an upper bound.
    parts = sum(getattr(m, k, 0) or 0 for k in (
        "argument_size_in_bytes", "output_size_in_bytes",
        "temp_size_in_bytes")) - (getattr(m, "alias_size_in_bytes", 0) or 0)
    peak = max(getattr(m, "peak_memory_in_bytes", 0) or 0, parts)
    out["peak_bytes"] = int(peak) if peak else None
  return out


def measure_jit(fn: Callable, args: tuple, policy: TimingPolicy,
                keep_result: bool = False,
                budget_bytes: float | None = None,
                max_run_flops: float | None = None,
                keep_call: bool = False,
                compiler_options: dict[str, Any] | None = None
                ) -> dict[str, Any]:
  """First call (trace + compile + run) and median call time of ``jit(fn)``
  (compiled with ``compiler_options``: autontk's calls pass
  ``autontk.compiler_options()``, what a direct call is compiled with).

  The first call goes through ``lower``/``compile`` so the same executable
  gives the cost analysis, the first-call time and the repeated timings.
  A program whose compiled peak memory exceeds ``budget_bytes`` is not run:
  the record says ``over_budget``. One whose compiled FLOPs exceed
  ``max_run_flops`` is only compiled and analysed (``skipped_slow``).
  ``keep_call`` keeps the compiled call as ``_call`` (for
  :func:`bench.timing.interleave`).
  """
  gc.collect()  # a collection of earlier cases' garbage is not this one's
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=compiler_options)
  t2 = time.perf_counter()
  rec: dict[str, Any] = {"trace_s": t1 - t0, "compile_s": t2 - t1}
  rec.update(cost_of(compiled))
  if budget_bytes and rec["peak_bytes"] and rec["peak_bytes"] > budget_bytes:
    rec["over_budget"] = True
    return rec
  if max_run_flops and rec["flops"] and rec["flops"] > max_run_flops:
    rec["skipped_slow"] = True
    return rec
  result = block(compiled(*args))
  t3 = time.perf_counter()
  rec.update(first_call_s=t3 - t0, first_run_s=t3 - t2)
  rec.update(repeat(lambda: compiled(*args), policy))
  if keep_call:
    rec["_call"] = lambda: compiled(*args)
  if keep_result:
    rec["_result"] = result
  return rec


def measure_call(fn: Callable, args: tuple, policy: TimingPolicy,
                 keep_result: bool = False) -> dict[str, Any]:
  """Like :func:`measure_jit` for a callable that must not be wrapped in an
  outer ``jit`` (a host loop over compiled blocks): first call (its own
  compiles included) and median; no single program to analyse.
  """
  t0 = time.perf_counter()
  result = block(fn(*args))
  rec: dict[str, Any] = {"first_call_s": time.perf_counter() - t0,
                         "flops": None, "peak_bytes": None, "host_loop": True}
  rec.update(repeat(lambda: fn(*args), policy))
  if keep_result:
    rec["_result"] = result
  return rec


def error_record(e: BaseException) -> dict[str, Any]:
  msg = f"{type(e).__name__}: {e}"
  return {"error": msg[:400]}
