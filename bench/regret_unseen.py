"""Regret of ``implementation="auto"`` on models it was not tuned on, measured
on the function as users call it.

For each model of :mod:`bench.unseen_models`:

* **steady state** (one fresh process): ``ntk = autontk.ntk_fn(f, ...)``
  for every explicit method, for auto (cost model alone: a fresh cache
  directory, so no learned calibration) and for auto with ``tune=True``
  (its own plan cache); each called once, then all of them called
  directly (``ntk(x1, x2, params)``, no outer ``jax.jit``,
  ``jax.block_until_ready``) in interleaved rounds; the median per
  function. regret = median(auto) / min(median of each explicit method).
  The cost model's predicted time of every method is read from
  ``ntk.report`` and kept next to the measurement.
* **first calls** (one fresh process each, fresh cache directory, device
  constants known): the first call of auto's ``ntk`` (planning, compile,
  run) and the first call of an explicit ``ntk`` of the method auto chose.
  Each process first computes a tiny unrelated NTK with every method, so
  imports and JAX's first traces land on neither.

Run: ``python -m bench --quick --only regret_unseen`` (with the other
suites' conventions), or alone:
``python -m bench.regret_unseen [--tag NAME] [--models NAME ...]``, which
writes ``bench/results/<tag>/regret_unseen.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
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

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")
CONSTANTS = "device_constants.json"


def _load() -> tuple[float, float, float]:
  return os.getloadavg()


def _block(x):
  import jax
  return jax.block_until_ready(x)


def _ntk(autontk, m, implementation: str, **options):
  return autontk.ntk_fn(m.f, trace_axes=m.trace_axes, vmap_axes=m.vmap_axes,
                        implementation=implementation, **options)


def _warm_up(autontk) -> None:
  """A tiny unrelated NTK per method and one auto plan: imports and JAX's
  first traces are paid here, not by the first call measured next."""
  import jax.numpy as jnp
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  p = {"w": jnp.ones((3, 5)), "v": jnp.ones((5, 2))}
  x = jnp.ones((2, 3))
  for impl in EXPLICIT + ("auto",):
    _block(autontk.ntk_fn(f, vmap_axes=0, implementation=impl)(x, None, p))


def first_call(name: str, implementation: str) -> dict[str, Any]:
  """The first call of ``ntk`` for one implementation, in this process."""
  import autontk
  from bench import unseen_models
  m = unseen_models.MODELS[name]()
  _warm_up(autontk)
  ntk = _ntk(autontk, m, implementation)
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
          "loop_iterations": getattr(f, "inner_loop_iterations", None)}
  out["predictor"] = report.predictor
  return out


def _interleave(fns: dict[str, Any], args, budget_s: float,
                min_rounds: int = 9, max_rounds: int = 400
                ) -> tuple[dict, dict[str, list[float]]]:
  """Median seconds per call of each function, called in turn (each round
  starts one function later, so that none always follows the same one);
  also every round's times."""
  keys = list(fns)
  times: dict[str, list[float]] = {k: [] for k in keys}
  t_end = time.perf_counter() + budget_s
  rounds = 0
  while rounds < max_rounds and (rounds < min_rounds or
                                 time.perf_counter() < t_end):
    for i in range(len(keys)):
      k = keys[(rounds + i) % len(keys)]
      t0 = time.perf_counter()
      _block(fns[k](*args))
      times[k].append(time.perf_counter() - t0)
    rounds += 1
  return ({k: {"median_s": statistics.median(ts), "min_s": min(ts),
               "repeats": len(ts)} for k, ts in times.items()}, times)


def _paired(times: dict[str, list[float]], key: str) -> float | None:
  """Median over rounds of ``key``'s time over the fastest explicit
  method's (by median) in the same round: machine load that drifts
  between rounds cancels."""
  explicit = [k for k in EXPLICIT if k in times]
  if key not in times or not explicit:
    return None
  best = min(explicit, key=lambda k: statistics.median(times[k]))
  return statistics.median(a / b for a, b in zip(times[key], times[best]))


def steady(name: str, budget_s: float, tune_budget_s: float
           ) -> dict[str, Any]:
  """Every explicit method, auto and tuned auto, warm and interleaved."""
  import numpy as np
  import autontk
  from bench import unseen_models
  m = unseen_models.MODELS[name]()
  args = (m.x1, m.x2, m.params)
  fns = {impl: _ntk(autontk, m, impl) for impl in EXPLICIT}
  fns["auto"] = _ntk(autontk, m, "auto")
  tuned_cache = autontk.PlanCache(tempfile.mkdtemp(prefix="autontk-tuned-"))
  fns["auto_tuned"] = _ntk(
      autontk, m, "auto", plan_cache=tuned_cache,
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
  stats, rounds = _interleave(ok, args, budget_s)
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
  (device constants copied in)."""
  cache = tempfile.mkdtemp(prefix="autontk-unseen-")
  if constants and os.path.exists(constants):
    shutil.copy(constants, os.path.join(cache, CONSTANTS))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # The repository comes after any PYTHONPATH given (which may point at
  # another autontk to measure), and the process runs outside it.
  env = {**os.environ, "AUTONTK_CACHE_DIR": cache, "AUTONTK_JAX_CACHE": "0",
         "PYTHONPATH": os.pathsep.join(
             [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
              if p] + [root])}
  cmd = [sys.executable, "-m", "bench.regret_unseen", "--child", mode,
         "--model", name, "--out", out, "--config", json.dumps(cfg)]
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


def run(cfg_quick: bool = True, models: list[str] | None = None,
        log=print, checkpoint=None) -> dict[str, Any]:
  """Runs the suite (each model in fresh processes); returns its JSON."""
  from autontk.costmodel import device
  from autontk import _paths
  from bench import unseen_models
  device.constants()  # measured once here, copied into every child's cache
  constants = str(_paths.cache_directory() / CONSTANTS)
  cfg = {"budget_s": 5.0 if cfg_quick else 10.0,
         "tune_budget_s": 10.0 if cfg_quick else 40.0}
  work = tempfile.mkdtemp(prefix="autontk-unseen-work-")
  names = models or list(unseen_models.MODELS)
  res: dict[str, Any] = {"suite": "regret_unseen", "config": cfg,
                         "load_start": _load(), "cases": []}
  for name in names:
    try:
      unseen_models.MODELS[name]()
    except ImportError as e:
      log(f"[regret_unseen] {name}: skipped ({e})")
      res["cases"].append({"name": name, "skipped": str(e)})
      continue
    log(f"[regret_unseen] {name} (load {_load()[0]:.1f})")
    res["cases"].append(run_model(name, cfg, constants, work, log))
    res["summary"] = summary(res["cases"])
    if checkpoint is not None:
      checkpoint(res)
  res["load_end"] = _load()
  res["summary"] = summary(res["cases"])
  shutil.rmtree(work, ignore_errors=True)
  return res


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="*")
  p.add_argument("--tag", default=None)
  p.add_argument("--full", action="store_true")
  p.add_argument("--child", choices=("steady", "first"))
  p.add_argument("--model")
  p.add_argument("--out")
  p.add_argument("--config", default="{}")
  args = p.parse_args(argv)
  if args.child:
    cfg = json.loads(args.config)
    rec = (steady(args.model, cfg["budget_s"], cfg["tune_budget_s"])
           if args.child == "steady" else
           first_call(args.model, cfg["implementation"]))
    with open(args.out, "w") as fh:
      json.dump(rec, fh, indent=1, default=str)
    return 0
  return standalone(args)


def standalone(args) -> int:
  """``python -m bench.regret_unseen``: the suite alone, recorded."""
  from bench import report_unseen
  os.environ.setdefault("AUTONTK_CACHE_DIR",
                        tempfile.mkdtemp(prefix="autontk-bench-"))
  os.environ.setdefault("AUTONTK_JAX_CACHE", "0")
  from bench.__main__ import default_tag, machine_info
  info = machine_info()
  tag = args.tag or default_tag(info)
  out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "results", tag)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "regret_unseen.json")
  t0 = time.perf_counter()

  def save(res):
    res.update(machine=info, tag=tag, quick=not args.full,
               suite_wall_s=time.perf_counter() - t0,
               date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    with open(path, "w") as fh:
      json.dump(res, fh, indent=1, default=str)

  res = run(not args.full, args.models, checkpoint=save)
  save(res)
  with open(os.path.join(out_dir, "regret_unseen.md"), "w") as fh:
    fh.write(report_unseen.markdown(res) + "\n")
  print(report_unseen.markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
