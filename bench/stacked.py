"""``stacked``: one network with its layers held four ways, every method.

The models of :mod:`bench.zoo.stacked` (separate leaves, an indexed stacked
leaf, ``lax.scan`` over layers, ``fori_loop``), each called the way a user
calls the library: ``ntk = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0,
implementation=m)``, then ``ntk(x1, None, params)`` directly (no extra
``jit``). After each function's first call, all functions of a model are
timed together by :func:`bench.timing.interleaved`; ``auto`` is timed the
same way (its plan is made by the first call).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

import autontk
from bench import timing
from bench.zoo import stacked as zoo

METHODS = ("jacobian_contraction", "ntk_vector_products",
           "structured_derivatives", "auto")
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD", "auto": "auto"}


def _first_call(fn, x, params) -> tuple[Any, float]:
  t0 = time.perf_counter()
  k = jax.block_until_ready(fn(x, None, params))
  return k, time.perf_counter() - t0


def _compiled_cost(fn, x, params) -> dict[str, float]:
  """FLOPs and bytes XLA counts in the compiled program (a steadier
  comparison than times on a shared machine; loop bodies count once)."""
  try:
    cost = jax.jit(lambda p, x: fn(x, None, p)).lower(
        params, x).compile().cost_analysis()
    return {"flops": float(cost["flops"]),
            "bytes": float(cost["bytes accessed"])}
  except Exception:  # noqa: BLE001 - optional
    return {}


def _auto_pick(fn, x, params) -> tuple[str | None, bool]:
  """The method auto chose, and whether its plan is that method's plain
  (unchunked) plan."""
  try:
    plan = fn.plan(x, None, params)
  except Exception:  # noqa: BLE001 - older versions
    return None, False
  return plan.implementation.name.lower(), plan.chunking is None


def run_model(model: dict, quick: bool, log=print) -> dict[str, Any]:
  """Every variant x method of one model: first call, interleaved median,
  relative error against the separate-leaves Jacobian contraction."""
  x = model["x"]
  fns, records, ref = {}, [], None
  for variant, f in model["fns"].items():
    params = zoo.params_of(variant, model["rest"], model["stack"])
    for method in METHODS:
      rec = {"model": model["name"], "variant": variant, "method": method}
      records.append(rec)
      try:
        fn = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0,
                            implementation=method)
        k, rec["first_call_s"] = _first_call(fn, x, params)
      except Exception as e:  # noqa: BLE001 - recorded, not fatal
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
        log(f"  {variant:9s} {SHORT[method]:5s} error {rec['error']}")
        continue
      k = np.asarray(k, np.float64)
      ref = k if ref is None else ref
      rec["rel_err"] = float(np.max(np.abs(k - ref)) / np.max(np.abs(ref)))
      if method == "auto":
        rec["auto_pick"], rec["auto_plain"] = _auto_pick(fn, x, params)
      if method == "structured_derivatives":
        rec.update(_compiled_cost(fn, x, params))
      fns[(variant, method)] = (lambda fn=fn, p=params: fn(x, None, p))
  stats = timing.interleaved(fns, rounds=5 if quick else 9,
                             time_s=4.0 if quick else 15.0)
  for rec in records:
    st = stats.get((rec["variant"], rec["method"]))
    if st:
      rec.update(median_s=st["median_s"], min_s=st["min_s"],
                 repeats=st["repeats"])
      log(f"  {rec['variant']:9s} {SHORT[rec['method']]:5s} "
          f"{1e3 * rec['median_s']:9.2f} ms  err {rec['rel_err']:.1e}"
          + (f"  pick {rec.get('auto_pick')}" if rec["method"] == "auto"
             else ""))
  return {"name": model["name"], "note": model["note"], "records": records}


def run(cfg, log=print) -> dict[str, Any]:
  """The suite: every model of :data:`bench.zoo.stacked.MODELS`."""
  out: dict[str, Any] = {"cases": []}
  for name, make in zoo.MODELS.items():
    if not cfg.selected(name):
      continue
    log(f"stacked: {name}")
    out["cases"].append(run_model(make(cfg.quick), cfg.quick, log))
    cfg.save_partial(out)
  return out


def markdown(res: dict[str, Any]) -> str:
  """Per model: median ms per call, variants x methods, and ratios."""
  lines = ["### Stacked layers (separate leaves / indexed / scan / fori)",
           "", "Median ms per call, `trace_axes=()`, `vmap_axes=0`, called "
           "directly, interleaved. `SD / sep.`: structured derivatives "
           "over the same model with separate leaves; `auto pick`.", ""]
  for case in res["cases"]:
    recs = {(r["variant"], r["method"]): r for r in case["records"]}
    lines += [f"**{case['name']}** ({case['note']})", "",
              "| parameters held as | JC | NTVP | SD | auto | auto pick | "
              "SD / sep. | max rel err |",
              "|---|---|---|---|---|---|---|---|"]
    sep = recs.get(("separate", "structured_derivatives"), {}).get(
        "median_s")
    for variant in zoo.VARIANTS:
      row = [recs.get((variant, m)) for m in METHODS]
      if not any(row):
        continue
      cells = [("n/a" if r is None or "median_s" not in r else
                f"{1e3 * r['median_s']:.1f}") for r in row]
      sd = row[2].get("median_s") if row[2] else None
      ratio = f"{sd / sep:.2f}" if sd and sep else "n/a"
      pick = SHORT.get((row[3] or {}).get("auto_pick") or "", "n/a")
      err = max((r.get("rel_err") or 0.0) for r in row if r)
      lines.append(f"| {variant} | " + " | ".join(cells) +
                   f" | {pick} | {ratio} | {err:.1e} |")
    lines.append("")
  return "\n".join(lines)


def _medians(res: dict) -> dict[tuple, dict]:
  return {(c["name"], r["variant"], r["method"]): r
          for c in res["cases"] for r in c["records"] if "median_s" in r}


def regret(res: dict) -> list[tuple[str, str, float]]:
  """Per model and variant, the time of auto's plan over the fastest
  explicit method's (1.0: auto chose the best). A plain plan is timed as
  the method it names (the same program); a chunked one by its own runs."""
  med = _medians(res)
  out = []
  for (model, variant, method), r in sorted(med.items()):
    if method != "auto":
      continue
    best = min((med[(model, variant, m)]["median_s"] for m in METHODS[:3]
                if (model, variant, m) in med), default=None)
    picked = med.get((model, variant, r.get("auto_pick")))
    t = (picked["median_s"] if picked and r.get("auto_plain") else
         r["median_s"])
    if best:
      out.append((model, variant, t / best))
  return out
