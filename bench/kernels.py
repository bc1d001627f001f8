"""``kernels``: what the kernel options cost: parameter subsets, groups, pNTK.

Three parts, every kernel called as users call it (``ntk(x1, None,
params)``, no outer ``jax.jit``), first call excluded, the candidates of a
case timed together by :func:`bench.timing.interleaved`:

* ``subset``: the NTK with respect to the last layer (``wrt=``) of a deep
  MLP, a CNN and an attention block against the full NTK: median time and
  compiled FLOPs of auto's plan and of each explicit method, and their
  ratios (from the ``regret`` part's measurements).
* ``regret``: on full, subset (``wrt``) and grouped (``groups="layer"``)
  kernels of several models, every explicit method and ``auto`` with the
  cost model alone (no tuning, no plan cache); regret = time(auto) /
  time(fastest explicit method).
* ``pseudo``: the pseudo-NTK (``pntk_fn``) against the full NTK of models
  with many logits O, traced (``trace_axes=(-1,)``) and full (O×O blocks).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax

import autontk
from bench import timing
from bench.config import RunConfig
from bench.zoo import functions as zoo

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")


def _timed(ntk, args) -> dict[str, Any]:
  """The first call, and the call kept for the interleaved timing."""
  t0 = time.perf_counter()
  jax.block_until_ready(ntk(*args))
  return {"first_call_s": time.perf_counter() - t0,
          "_call": lambda: ntk(*args)}


def _interleave(recs: dict[str, dict[str, Any]], budget_s: float) -> None:
  """Medians of the interleaved calls of ``recs`` (those with a ``_call``)."""
  calls = {k: r.pop("_call") for k, r in recs.items() if "_call" in r}
  for k, st in timing.interleaved(calls, rounds=9, time_s=budget_s).items():
    st.pop("times")
    recs[k].update(st)


def _flops(ntk, plan, args) -> float | None:
  try:
    compiled = ntk.lower(plan, args[0], args[1], args[2], {}).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    v = float(cost.get("flops", -1))
  except Exception:  # noqa: BLE001 - host-loop plans have no single program
    return None
  return v if v > 0 else None


def measure(f: Callable, params, x, budget_s: float,
            **options: Any) -> dict[str, Any]:
  """Every explicit method and auto on one kernel; interleaved medians."""
  args = (x, None, params)
  recs: dict[str, dict[str, Any]] = {}
  for impl in EXPLICIT + ("auto",):
    ntk = autontk.ntk_fn(f, implementation=impl, vmap_axes=0,
                         plan_cache=False, **options)
    try:
      rec = _timed(ntk, args)
    except Exception as e:  # noqa: BLE001 - recorded, the case goes on
      recs[impl] = {"error": f"{type(e).__name__}: {e}"[:300]}
      continue
    plan = ntk.plan(*args)
    rec["plan"] = plan.describe()
    rec["flops"] = _flops(ntk, plan, args)
    if impl == "auto":
      rec["call"] = ntk.problem(*args).describe()
    recs[impl] = rec
  _interleave(recs, budget_s)
  best = min((r["median_s"], k) for k, r in recs.items()
             if k in EXPLICIT and "median_s" in r)
  out = {"results": recs, "best_explicit": best[1]}
  auto = recs.get("auto", {})
  if "median_s" in auto:
    out["regret"] = auto["median_s"] / best[0]
    # When auto chose an explicit method's own plan, the same program was
    # also timed as that method: the ratio of the two explicit timings is
    # the regret of the choice, free of the noise of timing it twice.
    same = recs.get(auto["plan"], {})
    if "median_s" in same:
      out["choice_regret"] = same["median_s"] / best[0]
  return out


# Parts --------------------------------------------------------------------------

def subset_part(regret_rows: list[dict[str, Any]],
                log) -> list[dict[str, Any]]:
  """Last layer against full kernel, from the regret part's measurements."""
  rows = []
  by = {(r["model"], r["kernel"]): r for r in regret_rows}
  for model in dict.fromkeys(r["model"] for r in regret_rows):
    full, sub = by[(model, "full")], by[(model, "subset_last")]
    ratio = {k: _ratio(sub["results"].get(k), full["results"].get(k))
             for k in EXPLICIT + ("auto",)}
    rows.append({"model": model, "wrt": sub["wrt"], "ratio": ratio,
                 "full_auto": full["results"].get("auto"),
                 "subset_auto": sub["results"].get("auto")})
    log(f"subset {model}: auto time ratio {ratio['auto']}")
  return rows


def _ratio(a: dict | None, b: dict | None) -> dict[str, float | None]:
  out = {}
  for key in ("median_s", "flops"):
    va, vb = (a or {}).get(key), (b or {}).get(key)
    out[key] = va / vb if va and vb else None
  return out


def regret_part(cfg: RunConfig, budget_s: float, log) -> list[dict[str, Any]]:
  rows = []
  for name, m in zoo.option_models(cfg.quick).items():
    if not cfg.selected(name):
      continue
    f, params, x, last = m.f, m.params, m.x1, m.last
    variants = {"full": {}, "subset_last": {"wrt": last},
                "grouped_layer": {"groups": "layer"}}
    for variant, options in variants.items():
      res = measure(f, params, x, budget_s, **options)
      rows.append({"model": name, "kernel": variant, "wrt": last, **res})
      log(f"regret {name} {variant}: {res.get('regret')}")
  return rows


def pseudo_part(cfg: RunConfig, budget_s: float, log) -> list[dict[str, Any]]:
  rows = []
  outs = (100,) if cfg.quick else (100, 1000)
  for n_out in outs:
    if not cfg.selected(f"mlp_64-256-256-{n_out}"):
      continue
    m = zoo.deep_mlp(3, 256, 64, n_out, 16)
    f, params, x = m.f, m.params, m.x1
    for trace in ((-1,), ()):
      recs = {}
      for kind, make in (("ntk", autontk.ntk_fn), ("pntk", autontk.pntk_fn)):
        for impl in ("auto", "jacobian_contraction"):
          ntk = make(f, implementation=impl, vmap_axes=0, trace_axes=trace,
                     plan_cache=False)
          rec = _timed(ntk, (x, None, params))
          rec["plan"] = ntk.plan(x, None, params).describe()
          rec["flops"] = _flops(ntk, ntk.plan(x, None, params),
                                (x, None, params))
          recs[f"{kind}_{impl}"] = rec
      _interleave(recs, budget_s)
      ratio = {impl: _ratio(recs[f"pntk_{impl}"], recs[f"ntk_{impl}"])
               for impl in ("auto", "jacobian_contraction")}
      rows.append({"model": f"mlp_64-256-256-{n_out}", "n_out": n_out,
                   "trace_axes": list(trace), "results": recs,
                   "ratio": ratio})
      log(f"pseudo O={n_out} trace={trace}: {ratio}")
  return rows


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """The three parts; ``regret_summary``: geomean and worst regret."""
  quick = cfg.quick
  budget = 3.0 if quick else 6.0
  out: dict[str, Any] = {"regret": regret_part(cfg, budget, log),
                         "pseudo": pseudo_part(cfg, budget, log)}
  out["subset"] = subset_part(out["regret"], log)
  out["regret_summary"] = {}
  for key in ("regret", "choice_regret"):
    vals = [r[key] for r in out["regret"] if r.get(key)]
    if vals:
      out["regret_summary"][key] = {
          "geomean": math.exp(sum(map(math.log, vals)) / len(vals)),
          "worst": max(vals), "cases": len(vals)}
  return out


# Report -------------------------------------------------------------------------

def _ms(t: float | None) -> str:
  return "n/a" if t is None else f"{t * 1e3:.3g} ms"


def _x(v: float | None) -> str:
  return "n/a" if v is None else f"{v:.3g}"


def markdown(res: dict[str, Any]) -> str:
  lines = ["Medians of interleaved calls.",
           "", "## Last layer (`wrt`) vs the full NTK", "",
           "| model | wrt | auto full | auto wrt | time ratio | FLOPs ratio "
           "| JC / NTVP / SD time ratio |", "|---|---|---|---|---|---|---|"]
  for r in res["subset"]:
    a = r["ratio"]
    lines.append(
        f"| {r['model']} | `{r['wrt']}` | "
        f"{_ms((r['full_auto'] or {}).get('median_s'))} | "
        f"{_ms((r['subset_auto'] or {}).get('median_s'))} | "
        f"{_x(a['auto']['median_s'])} | {_x(a['auto']['flops'])} | "
        + " / ".join(_x(a[k]['median_s']) for k in EXPLICIT) + " |")
  s = res["regret_summary"]
  lines += ["", "## auto's regret (cost model alone)", "",
            "regret = time(auto) / time(fastest explicit method); choice "
            "regret = time(the explicit method auto chose, when its plan is "
            "that method's) / time(fastest explicit method), free of the "
            "noise of timing the same program twice.", ""]
  for key, name in (("regret", "regret"), ("choice_regret", "choice regret")):
    if key in s:
      lines.append(f"* {name}: geomean {s[key]['geomean']:.3f}, worst "
                   f"{s[key]['worst']:.3f} over {s[key]['cases']} kernels")
  lines += ["", "| model | kernel | JC | NTVP | SD | auto | auto's plan "
            "| regret | choice regret |", "|---|---|---|---|---|---|---|---|---|"]
  for r in res["regret"]:
    rs = r["results"]
    lines.append(
        f"| {r['model']} | {r['kernel']} | "
        + " | ".join(_ms(rs.get(k, {}).get("median_s"))
                     for k in EXPLICIT + ("auto",))
        + f" | {rs.get('auto', {}).get('plan', '?')} | "
          f"{_x(r.get('regret'))} | {_x(r.get('choice_regret'))} |")
  lines += ["", "## Pseudo-NTK vs NTK", "",
            "| model | O | trace_axes | NTK (auto) | pNTK (auto) | time ratio "
            "| FLOPs ratio | JC time ratio | JC FLOPs ratio |",
            "|---|---|---|---|---|---|---|---|---|"]
  for r in res["pseudo"]:
    a, j = r["ratio"]["auto"], r["ratio"]["jacobian_contraction"]
    lines.append(
        f"| {r['model']} | {r['n_out']} | {tuple(r['trace_axes'])} | "
        f"{_ms(r['results']['ntk_auto']['median_s'])} | "
        f"{_ms(r['results']['pntk_auto']['median_s'])} | "
        f"{_x(a['median_s'])} | {_x(a['flops'])} | {_x(j['median_s'])} | "
        f"{_x(j['flops'])} |")
  return "\n".join(lines) + "\n"
