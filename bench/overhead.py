"""``overhead``: per-call overhead of the functions autontk returns.

For each model of :data:`bench.zoo.functions.OVERHEAD`, the function
``ntk_fn`` returns (two explicit methods and ``"auto"``) is called the way
users call it, ``ntk(x1, x2, params, **kwargs)``, and compared with
``jax.jit`` of the very same computation: ``jax.jit(lambda x1, x2, p, kw:
ntk(x1, x2, p, **kw, train=True))``, whose arguments are the arrays (array
kwargs included) and which closes over the Python constants. Both are warm;
batches of many calls of each are timed together by
:func:`bench.timing.interleaved`, and the overhead is the median over rounds
of the per-call difference within a round. ``ntk_vp_fn``'s product is
compared with ``jax.jit`` of the same product the same way. Targets: at
most 20 µs of overhead, and products within 1.1× of the jitted function.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

import autontk
from bench import timing
from bench.config import RunConfig
from bench.zoo import functions as zoo


def _batch(fn: Callable[[], Any], calls: int) -> Callable[[], Any]:
  def run():
    for _ in range(calls):
      out = fn()
    return out
  return run


def _per_call(fn: Callable[[], Any], calls: int) -> float:
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  jax.block_until_ready(_batch(fn, calls)())
  return (time.perf_counter() - t0) / calls


def compare(direct: Callable[[], Any], jitted: Callable[[], Any],
            rounds: int) -> dict[str, float]:
  """Per-call seconds of both, over interleaved rounds.

  The overhead is the median of the *paired* differences (each round times
  a batch of both functions back to back, in alternating order), so that
  slow drifts of a shared machine cancel within a pair instead of adding
  to one side; the ratio is the median of the paired ratios.
  """
  one = _per_call(jitted, 3)
  calls = max(20, min(2000, int(0.02 / max(one, 1e-7))))
  stats = timing.interleaved({"direct": _batch(direct, calls),
                              "jit": _batch(jitted, calls)},
                             rounds=rounds, time_s=0.0)
  d = [t / calls for t in stats["direct"]["times"]]
  j = [t / calls for t in stats["jit"]["times"]]
  diffs = [a - b for a, b in zip(d, j)]
  q1, _, q3 = statistics.quantiles(diffs, n=4)
  return {"direct_s": statistics.median(d), "jit_s": statistics.median(j),
          "overhead_s": statistics.median(diffs),
          "overhead_q1_s": q1, "overhead_q3_s": q3,
          "ratio": statistics.median(a / b for a, b in zip(d, j)),
          "calls_per_round": calls}


def run_case(m: zoo.Model, rounds: int) -> list[dict[str, Any]]:
  """Rows of one model: each ``ntk_fn`` function and the ``ntk_vp_fn``
  product against ``jax.jit`` of the same computation."""
  f, p, x1, x2, kwargs = m.f, m.params, m.x1, m.x2, m.kwargs
  options = {"trace_axes": m.trace_axes, "vmap_axes": m.vmap_axes}
  rows = []
  # Array kwargs are arguments of the jitted functions too (closed over,
  # XLA would fold them in as constants: another computation); Python
  # constants (``train=True``) are closed over, as users write it.
  arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
  static = {k: v for k, v in kwargs.items() if k not in arrays}
  for impl in ("structured_derivatives", "jacobian_contraction", "auto"):
    ntk = autontk.ntk_fn(f, implementation=impl, **options)
    jitted = jax.jit(lambda a, b, q, kw: ntk(a, b, q, **kw, **static),
                     compiler_options=autontk.compiler_options())
    r = compare(lambda: ntk(x1, x2, p, **kwargs),
                lambda: jitted(x1, x2, p, arrays), rounds)
    rows.append({"case": m.note, "function": f"ntk_fn({impl})", **r})
  vp = autontk.ntk_vp_fn(f, x1, x2, p, **kwargs)
  cot = jax.tree.map(jnp.ones_like, jax.eval_shape(
      lambda: f(p, x1 if x2 is None else x2, **kwargs)))
  vp_jit = jax.jit(lambda a, b, q, kw, c: autontk.ntk_vp_fn(
      f, a, b, q, **kw, **static)(c),
                   compiler_options=autontk.compiler_options())
  r = compare(lambda: vp(cot), lambda: vp_jit(x1, x2, p, arrays, cot),
              rounds)
  rows.append({"case": m.note, "function": "ntk_vp_fn product", **r})
  return rows


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """Every model of the overhead zoo, 61 rounds per row (21 in quick)."""
  rounds = 21 if cfg.quick else 61
  info = {"rounds": rounds, "load_before": os.getloadavg()[0]}
  rows = []
  for make in zoo.OVERHEAD:
    m = make()
    if not cfg.selected(m.note):
      continue
    rows += run_case(m, rounds)
    for r in rows[-4:]:
      log(f"  {r['case']} {r['function']}: overhead "
          f"{r['overhead_s'] * 1e6:.1f} µs, ratio {r['ratio']:.3f}")
  info["load_after"] = os.getloadavg()[0]
  return {"info": info, "rows": rows}


def markdown(res: dict[str, Any]) -> str:
  info = res["info"]
  rows = res["rows"]
  out = [f"Load average before the run "
         f"{info['load_before']}; after {info['load_after']}; "
         f"{info['rounds']} interleaved rounds per row.", "",
         "| case | function | direct µs | jax.jit µs | overhead µs "
         "| overhead quartiles µs | ratio |",
         "|---|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['case']} | {r['function']} | {r['direct_s'] * 1e6:.1f}"
               f" | {r['jit_s'] * 1e6:.1f} | {r['overhead_s'] * 1e6:.1f} | "
               f"{r['overhead_q1_s'] * 1e6:.1f} – "
               f"{r['overhead_q3_s'] * 1e6:.1f} | {r['ratio']:.3f} |")
  worst = max(r["overhead_s"] for r in rows if r["function"] != (
      "ntk_vp_fn product"))
  vp = max(r["ratio"] for r in rows if r["function"] == "ntk_vp_fn product")
  out += ["", f"Worst overhead of `ntk_fn`'s functions: {worst * 1e6:.1f} µs "
          f"(target ≤ 20 µs). Worst `ntk_vp_fn` product ratio: {vp:.3f} "
          "(target ≤ 1.1)."]
  return "\n".join(out) + "\n"
