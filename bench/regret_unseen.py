"""``regret_unseen``: auto's regret on models it was not tuned on.

For each model of :data:`bench.zoo.functions.UNSEEN`, measured on the
function as users call it:

* **steady state** (one fresh process): ``ntk = autontk.ntk_fn(f, ...)``
  for every explicit method, for auto (cost model alone: a fresh cache
  directory, so no learned calibration) and for auto with ``tune=True``
  (its own plan cache); each called once, then all of them called
  directly (``ntk(x1, x2, params)``, no outer ``jax.jit``) and timed
  together by :func:`bench.timing.interleaved`; the median per function.
  regret = median(auto) / min(median of each explicit method). The cost
  model's predicted time of every method is read from ``ntk.report`` and
  kept next to the measurement.
* **first calls** (one fresh process each, fresh cache directory, device
  constants known): the first call of auto's ``ntk`` (planning, compile,
  run) and the first call of an explicit ``ntk`` of the method auto chose.
  Each process first computes a tiny unrelated NTK with every method, so
  imports and JAX's first traces land on neither.

The fresh processes run this module as a worker
(``python -m bench.regret_unseen steady|first MODEL OUT CONFIG``).
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import autontk
from autontk import _paths
from autontk.costmodel import device
from bench import timing
from bench.config import RunConfig
from bench.zoo import functions as zoo
from bench.zoo import scanned

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD"}
CONSTANTS = "device_constants.json"
ZOOS = {"unseen": zoo.UNSEEN, "scanned": scanned.SCANNED}
"""The model registries a run can measure (``zoo`` in its configuration)."""


def _load() -> tuple[float, float, float]:
  return os.getloadavg()


def _block(x):
  return jax.block_until_ready(x)


def _ntk(m, implementation: str, **options):
  return autontk.ntk_fn(m.f, trace_axes=m.trace_axes, vmap_axes=m.vmap_axes,
                        implementation=implementation, **options)


def _warm_up() -> None:
  """A tiny unrelated NTK per method and one auto plan: imports and JAX's
  first traces are paid here, not by the first call measured next."""
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  p = {"w": jnp.ones((3, 5)), "v": jnp.ones((5, 2))}
  x = jnp.ones((2, 3))
  for impl in EXPLICIT + ("auto",):
    _block(autontk.ntk_fn(f, vmap_axes=0, implementation=impl)(x, None, p))


def first_call(name: str, implementation: str,
               models: str = "unseen") -> dict[str, Any]:
  """The first call of ``ntk`` for one implementation, in this process."""
  m = ZOOS[models][name]()
  _warm_up()
  ntk = _ntk(m, implementation)
  gc.collect()
  t0 = time.perf_counter()
  _block(ntk(m.x1, m.x2, m.params))
  rec: dict[str, Any] = {"first_call_s": time.perf_counter() - t0,
                         "load": _load()}
  if implementation == "auto":
    plan = ntk.plan(m.x1, m.x2, m.params)
    rec.update(plan=plan.describe(),
               plan_method=plan.implementation.name.lower())
  return rec


def _predictions(ntk, m) -> dict[str, Any]:
  """The cost model's estimate of each unchunked method's default plan."""
  out: dict[str, Any] = {}
  try:
    report = ntk.report(m.x1, m.x2, m.params)
  except Exception as e:  # noqa: BLE001 - a report is a bonus
    return {"error": f"{type(e).__name__}: {e}"[:300]}
  for e in report.estimates:
    if e.plan.chunking is None and e.plan.config is None:
      f = e.features
      out[e.plan.implementation.name.lower()] = {
          "predicted_s": e.predicted_time, "source": e.source,
          "flops": f.flops, "bytes_accessed": f.bytes_accessed,
          "kernels": getattr(f, "kernels", None),
          "loop_iterations": getattr(f, "inner_loop_iterations", None),
          "strided_bytes": getattr(f, "strided_bytes", None)}
  out["predictor"] = report.predictor
  return out


def _paired(times: dict[str, list[float]], key: str) -> float | None:
  """Median over rounds of ``key``'s time over the fastest explicit
  method's (by median) in the same round: machine load that drifts
  between rounds cancels."""
  explicit = [k for k in EXPLICIT if k in times]
  if key not in times or not explicit:
    return None
  best = min(explicit, key=lambda k: statistics.median(times[k]))
  return statistics.median(a / b for a, b in zip(times[key], times[best]))


def steady(name: str, budget_s: float, tune_budget_s: float,
           models: str = "unseen") -> dict[str, Any]:
  """Every explicit method, auto and (with a tuning budget) tuned auto,
  warm and interleaved."""
  m = ZOOS[models][name]()
  args = (m.x1, m.x2, m.params)
  fns = {impl: _ntk(m, impl) for impl in EXPLICIT}
  fns["auto"] = _ntk(m, "auto")
  if tune_budget_s:
    tuned_cache = autontk.PlanCache(tempfile.mkdtemp(prefix="autontk-tuned-"))
    fns["auto_tuned"] = _ntk(
        m, "auto", plan_cache=tuned_cache,
        tune=autontk.TuneOptions(budget_s=tune_budget_s, progress=False))
  recs: dict[str, Any] = {}
  kernels: dict[str, Any] = {}
  for k, fn in fns.items():
    t0 = time.perf_counter()
    try:
      kernels[k] = np.asarray(_block(fn(*args)), dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - a failing method is "n/a"
      recs[k] = {"error": f"{type(e).__name__}: {e}"[:300]}
      continue
    recs[k] = {"first_in_process_s": time.perf_counter() - t0}
  ok = {k: fn for k, fn in fns.items() if "error" not in recs[k]}
  load0 = _load()
  stats = timing.interleaved({k: (lambda fn=fn: fn(*args))
                              for k, fn in ok.items()},
                             rounds=9, time_s=budget_s)
  rounds = {k: st.pop("times") for k, st in stats.items()}
  for k, rec in stats.items():
    recs[k].update(rec)
  for k in ("auto", "auto_tuned"):
    if k in rounds:
      recs[k]["paired_regret"] = _paired(rounds, k)
  ref = kernels.get("jacobian_contraction")
  for k, kern in kernels.items():
    if ref is not None and kern.shape == ref.shape:
      recs[k]["rel_err"] = float(np.max(np.abs(kern - ref)) /
                                 (np.max(np.abs(ref)) or 1.0))
  for k in ("auto", "auto_tuned"):
    if k in ok:
      plan = fns[k].plan(*args)
      recs[k].update(plan=plan.describe(),
                     plan_method=plan.implementation.name.lower())
  return {"results": recs, "predicted": _predictions(fns["auto"], m),
          "load": [load0, _load()]}


def _child(mode: str, name: str, out: str, cfg: dict[str, Any],
           constants: str | None, log) -> dict[str, Any]:
  """Runs one measurement in a fresh process with a fresh cache directory
  (device constants copied in); ``cfg["autontk"]``, if set, is a folder
  holding another ``autontk`` package to measure in its place."""
  cache = tempfile.mkdtemp(prefix="autontk-unseen-")
  if constants and os.path.exists(constants):
    shutil.copy(constants, os.path.join(cache, CONSTANTS))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # The repository comes after any PYTHONPATH given (which may point at
  # another autontk to measure), and the process runs outside it.
  paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  env = {**os.environ, "AUTONTK_CACHE_DIR": cache, "AUTONTK_JAX_CACHE": "0",
         "PYTHONPATH": os.pathsep.join(
             ([cfg["autontk"]] if cfg.get("autontk") else []) + paths +
             [root])}
  cmd = [sys.executable, "-m", "bench.regret_unseen", mode, name, out,
         json.dumps(cfg)]
  try:
    proc = subprocess.run(cmd, env=env, cwd=cache, capture_output=True,
                          text=True, timeout=cfg.get("timeout_s", 900))
  except subprocess.TimeoutExpired:
    return {"error": "timed out"}
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  try:
    with open(out) as fh:
      return json.load(fh)
  except (OSError, ValueError):
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    log(f"  {mode} failed: {' | '.join(tail)}")
    return {"error": " | ".join(tail)[-400:] or f"exit {proc.returncode}"}


def run_model(name: str, cfg: dict[str, Any], constants: str | None,
              work: str, log=print) -> dict[str, Any]:
  """One model: steady state, then auto's and its method's first calls."""
  case: dict[str, Any] = {"name": name}
  path = lambda mode: os.path.join(work, f"{name}.{mode}.json")
  case.update(_child("steady", name, path("steady"), cfg, constants, log))
  if not cfg.get("first_calls", True):
    summarise_case(case)
    log(f"  {name}: " + describe_case(case))
    return case
  first = _child("first", name, path("first-auto"),
                 dict(cfg, implementation="auto"), constants, log)
  case["first_auto"] = first
  method = first.get("plan_method")
  if method:
    case["first_method"] = _child("first", name, path("first-method"),
                                  dict(cfg, implementation=method),
                                  constants, log)
  summarise_case(case)
  log(f"  {name}: " + describe_case(case))
  return case


def summarise_case(case: dict[str, Any]) -> None:
  """Adds ``regret``, ``tuned_regret``, ``first_call_ratio``, ``best``."""
  recs = case.get("results", {})
  explicit = {k: recs[k]["median_s"] for k in EXPLICIT
              if "median_s" in recs.get(k, {})}
  if explicit:
    best = min(explicit, key=explicit.get)
    case["best"] = best
    for k, out in (("auto", "regret"), ("auto_tuned", "tuned_regret")):
      if "median_s" in recs.get(k, {}):
        case[out] = recs[k]["median_s"] / explicit[best]
      # The choice alone: the chosen method's own ntk (when the plan is the
      # method's default), without auto's per-call overhead.
      method = recs.get(k, {}).get("plan_method")
      if recs.get(k, {}).get("plan") == method and method in explicit:
        case[f"{out}_choice"] = explicit[method] / explicit[best]
  a = case.get("first_auto", {}).get("first_call_s")
  b = case.get("first_method", {}).get("first_call_s")
  if a and b:
    case["first_call_ratio"] = a / b


def describe_case(case: dict[str, Any]) -> str:
  def fmt(k):
    v = case.get(k)
    return "-" if v is None else f"{v:.2f}"
  auto = case.get("results", {}).get("auto", {})
  return (f"best {case.get('best', '-')}, auto {auto.get('plan', '-')}: "
          f"regret {fmt('regret')}, tuned {fmt('tuned_regret')}, first call "
          f"{fmt('first_call_ratio')}× the method's")


def _geo(xs: list[float]) -> float | None:
  xs = [x for x in xs if x and x > 0]
  return math.exp(statistics.mean(math.log(x) for x in xs)) if xs else None


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key in ("regret", "tuned_regret", "first_call_ratio", "regret_choice",
              "tuned_regret_choice"):
    xs = [c[key] for c in cases if c.get(key)]
    out[key] = {"geomean": _geo(xs), "worst": max(xs) if xs else None,
                "n": len(xs)}
  return out


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """Runs the suite (each model in fresh processes); returns its JSON."""
  return run_models(cfg, {"budget_s": 5.0 if cfg.quick else 10.0,
                          "tune_budget_s": 10.0 if cfg.quick else 40.0},
                    log)


def run_models(cfg: RunConfig, child_cfg: dict[str, Any],
               log=print) -> dict[str, Any]:
  """Measures every selected model of ``ZOOS[child_cfg.get("zoo",
  "unseen")]`` in fresh processes.

  ``child_cfg``: ``budget_s`` (timing per model), ``tune_budget_s`` (0: no
  tuned auto), optional ``zoo``, ``first_calls`` (default true) and
  ``autontk`` (a folder holding another ``autontk`` package to measure).
  """
  device.constants()  # measured once here, copied into every child's cache
  constants = str(_paths.cache_directory() / CONSTANTS)
  work = tempfile.mkdtemp(prefix="autontk-unseen-work-")
  res: dict[str, Any] = {"config": child_cfg, "load_start": _load(),
                         "cases": []}
  for name, make in ZOOS[child_cfg.get("zoo", "unseen")].items():
    if not cfg.selected(name):
      continue
    try:
      make()
    except ImportError as e:
      log(f"[regret_unseen] {name}: skipped ({e})")
      res["cases"].append({"name": name, "skipped": str(e)})
      continue
    log(f"[regret_unseen] {name} (load {_load()[0]:.1f})")
    res["cases"].append(run_model(name, child_cfg, constants, work, log))
    res["summary"] = summary(res["cases"])
    cfg.save_partial(res)
  res["load_end"] = _load()
  res["summary"] = summary(res["cases"])
  shutil.rmtree(work, ignore_errors=True)
  return res


def _worker(argv: list[str]) -> None:
  """A fresh process's measurement: ``steady|first MODEL OUT CONFIG``."""
  mode, name, out, cfg = argv[0], argv[1], argv[2], json.loads(argv[3])
  models = cfg.get("zoo", "unseen")
  rec = (steady(name, cfg["budget_s"], cfg["tune_budget_s"], models)
         if mode == "steady" else
         first_call(name, cfg["implementation"], models))
  with open(out, "w") as fh:
    json.dump(rec, fh, indent=1, default=str)


# Report ----------------------------------------------------------------------


def _ms(rec: dict[str, Any] | None) -> str:
  if not rec:
    return "-"
  if "error" in rec:
    return "n/a"
  v = rec.get("median_s")
  return "-" if v is None else f"{v * 1e3:.3g}"


def _x(v: float | None) -> str:
  return "-" if v is None else f"{v:.2f}"


def _plan(rec: dict[str, Any]) -> str:
  m = rec.get("plan_method")
  plan = rec.get("plan") or ""
  short = SHORT.get(m, m or "-")
  return short + (" (chunked)" if "chunk" in plan.lower() and m else "")


def _predicted(case: dict[str, Any]) -> str:
  pred = case.get("predicted", {})
  parts = []
  for m, s in SHORT.items():
    p = pred.get(m, {}).get("predicted_s") if isinstance(pred.get(m),
                                                          dict) else None
    parts.append(f"{s} {p * 1e3:.3g}" if p else f"{s} -")
  return ", ".join(parts)


def table(res: dict[str, Any]) -> str:
  head = ["model", "JC ms", "NTVP ms", "SD ms", "auto ms", "auto plan",
          "regret", "paired", "tuned ms", "tuned plan", "tuned regret",
          "auto 1st call s", "method 1st call s", "1st-call ratio",
          "predicted ms (cost model)"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for c in res.get("cases", []):
    if c.get("skipped"):
      lines.append(f"| {c['name']} | skipped: {c['skipped'][:60]} |")
      continue
    r = c.get("results", {})
    row = [c["name"]] + [_ms(r.get(m)) for m in SHORT] + [
        _ms(r.get("auto")), _plan(r.get("auto", {})), _x(c.get("regret")),
        _x(r.get("auto", {}).get("paired_regret")),
        _ms(r.get("auto_tuned")), _plan(r.get("auto_tuned", {})),
        _x(c.get("tuned_regret")),
        _x(c.get("first_auto", {}).get("first_call_s")),
        _x(c.get("first_method", {}).get("first_call_s")),
        _x(c.get("first_call_ratio")), _predicted(c)]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def markdown(res: dict[str, Any]) -> str:
  """Summary line, targets, and the per-model table."""
  s = res.get("summary", {})

  def line(key, what, target):
    d = s.get(key) or {}
    return (f"* {what}: geomean {_x(d.get('geomean'))}, worst "
            f"{_x(d.get('worst'))} over {d.get('n', 0)} models" +
            (f" (target {target})" if target else ""))

  load = res.get("load_start")
  return "\n".join([
      "### Regret on unseen models, called as users call them "
      "(`regret_unseen`)", "",
      line("regret", "auto, cost model alone", "≤ 1.05, worst ≤ 1.25"),
      line("tuned_regret", "auto, `tune=True`", "≤ 1.02, worst ≤ 1.10"),
      line("first_call_ratio",
           "planning + first call of auto / the chosen method's first call",
           "≤ 2, worst ≤ 3"),
      line("regret_choice", "the cost model's choice alone (the chosen "
           "method's own `ntk` / the fastest; no per-call overhead of auto)",
           ""),
      line("tuned_regret_choice", "the tuner's choice alone", ""),
      "", f"Machine load (1-minute average) at the start: "
      f"{load[0]:.1f}" if load else "", "",
      "Times are medians of interleaved calls of each `ntk` as returned by "
      "`ntk_fn` (no outer `jax.jit`); regret = median(auto) / median(fastest "
      "explicit method); `paired` = median over rounds of the same ratio "
      "within a round. First calls in fresh processes with a fresh cache "
      "directory and the device constants known. JC, NTVP, SD: Jacobian "
      "contraction, NTK-vector products, structured derivatives.",
      "", table(res)])


if __name__ == "__main__":
  _worker(sys.argv[1:])
