"""``tuned_regret``: auto with tuning on the library's bundled model suite.

For each model of ``autontk.suite``: ``ntk_fn(f, tune=...)`` tunes on first
use (in a fresh plan cache), then the tuned function and each explicit
method's function are called as users call them and timed together by
:func:`bench.timing.interleaved`. regret = time(tuned auto) / time(fastest
explicit method); the target with tuning is a geometric mean <= 1.03 and a
worst case <= 1.15.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from typing import Any

import autontk
from autontk import suite
from bench import timing
from bench.config import RunConfig

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")


def _ntk(m: dict[str, Any], **options: Any):
  return autontk.ntk_fn(m["f"], trace_axes=m.get("trace_axes", (-1,)),
                        diagonal_axes=m.get("diagonal_axes", ()),
                        vmap_axes=m.get("vmap_axes"), **options)


def run_model(name: str, budget_s: float) -> dict[str, Any]:
  """Tunes one model, then times it against every explicit method."""
  m = suite.SUITE[name]()
  args = (m["x1"], m.get("x2"), m["params"])
  cache = autontk.PlanCache(tempfile.mkdtemp(prefix="autontk-tuned-"))
  fns = {"auto": _ntk(m, plan_cache=cache, tune=autontk.TuneOptions(
      budget_s=budget_s, progress=False))}
  t0 = time.perf_counter()
  plan = fns["auto"].plan(*args)
  tune_s = time.perf_counter() - t0
  fns.update({impl: _ntk(m, implementation=impl) for impl in EXPLICIT})
  stats = timing.interleaved({k: (lambda fn=fn: fn(*args))
                              for k, fn in fns.items()},
                             rounds=9, time_s=1.0)
  best = min(EXPLICIT, key=lambda k: stats[k]["median_s"])
  return {"model": name, "plan": plan.describe(), "tune_s": tune_s,
          "best": best, "regret": stats["auto"]["median_s"] /
          stats[best]["median_s"],
          "median_s": {k: st["median_s"] for k, st in stats.items()}}


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """Every model of ``autontk.suite`` (tuning budget 15 s quick, 60 s full)."""
  budget = 15.0 if cfg.quick else 60.0
  rows = []
  for name in suite.SUITE:
    if not cfg.selected(name):
      continue
    rows.append(run_model(name, budget))
    r = rows[-1]
    log(f"  {name}: {r['plan'][:48]} tune {r['tune_s']:.1f} s, regret "
        f"{r['regret']:.3f}")
    cfg.save_partial({"rows": rows})
  regrets = [r["regret"] for r in rows]
  out: dict[str, Any] = {"tune_budget_s": budget, "rows": rows}
  if regrets:
    out["summary"] = {"geomean": math.exp(statistics.mean(
        math.log(r) for r in regrets)), "worst": max(regrets),
        "n": len(regrets)}
  return out


def markdown(res: dict[str, Any]) -> str:
  s = res.get("summary") or {}
  lines = [f"Tuning budget {res['tune_budget_s']:.0f} s per model; regret = "
           "median(tuned auto) / median(fastest explicit method), timed "
           "interleaved.", ""]
  if s:
    lines += [f"Geomean regret {s['geomean']:.3f}, worst {s['worst']:.3f} "
              f"over {s['n']} models (target ≤ 1.03, worst ≤ 1.15).", ""]
  lines += ["| model | tuned plan | tuning s | auto ms | fastest explicit "
            "| its ms | regret |", "|---|---|---|---|---|---|---|"]
  for r in res["rows"]:
    med = r["median_s"]
    lines.append(f"| {r['model']} | {r['plan']} | {r['tune_s']:.1f} | "
                 f"{med['auto'] * 1e3:.3g} | {r['best']} | "
                 f"{med[r['best']] * 1e3:.3g} | {r['regret']:.3f} |")
  return "\n".join(lines) + "\n"
