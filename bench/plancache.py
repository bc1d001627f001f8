"""``plancache``: a new process's first call on a plan-cache hit.

Three kinds of fresh processes share one ``AUTONTK_CACHE_DIR`` (plan cache +
JAX's persistent compilation cache beside it):

1. ``plan``: ``ntk_fn(f)`` with ``implementation="auto"``; the first call
   plans (cost model), stores the plan and compiles it.
2. ``hit``: a new process, same model and shapes: the first call's time
   (signature + cache lookup + loading the cached executable + run).
3. ``explicit``: a new process calling the chosen plan's method directly
   (``implementation=<method>``), whose executable is also in JAX's cache:
   the chosen plan's own (cached) compile + run.

overhead = median(hit first call) - median(explicit first call); the target
is at most 50 ms. Imports and array creation are outside the timed region
in every mode. The processes run this module as a worker
(``python -m bench.plancache MODE JOB.json``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

import autontk
from bench import cases as cases_mod
from bench import report
from bench.config import RunConfig
from bench.zoo import specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(mode: str, job_path: str) -> None:
  # Every mode shares JAX's persistent compilation cache where autontk puts
  # it (<cache>/jax), so "explicit" measures the chosen plan's *cached*
  # compile.
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(os.environ["AUTONTK_CACHE_DIR"], "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  with open(job_path) as fh:
    job = json.load(fh)
  case = cases_mod.Case.from_json(job["case"])
  params, x1, x2 = case.arrays()
  params = {k: jnp.asarray(v) for k, v in params.items()}
  x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
  f = specs.apply(case.spec)
  impl = job.get("method") if mode == "explicit" else "auto"
  t0 = time.perf_counter()
  ntk = autontk.ntk_fn(f, trace_axes=case.trace_axes, vmap_axes=0,
                       implementation=impl)
  jax.block_until_ready(ntk(x1, x2, params))
  first = time.perf_counter() - t0
  t1 = time.perf_counter()
  jax.block_until_ready(ntk(x1, x2, params))
  second = time.perf_counter() - t1
  out = {"mode": mode, "first_call_s": first, "second_call_s": second}
  if mode != "explicit":
    t2 = time.perf_counter()
    plan = ntk.plan(x1, x2, params)
    out["plan_lookup_s"] = time.perf_counter() - t2
    out["plan"] = plan.describe()
    out["method"] = plan.implementation.name.lower()
    out["plan_is_plain"] = plan.chunking is None and plan.config is None
  print("RESULT " + json.dumps(out), flush=True)


def _spawn(mode: str, job_path: str, env: dict[str, str]) -> dict[str, Any]:
  proc = subprocess.run([sys.executable, "-m", "bench.plancache", mode,
                         job_path], env=env, capture_output=True, text=True,
                        timeout=600)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  return {"error": (proc.stderr or proc.stdout)[-400:]}


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """Plans each case, then times hit and explicit processes in turn."""
  repeats = 3 if cfg.quick else 5
  results = []
  for case in cases_mod.plancache(cfg.quick):
    if not cfg.selected(case.name):
      continue
    with tempfile.TemporaryDirectory(prefix="autontk-bench-cache-") as cache:
      env = dict(os.environ)
      env["AUTONTK_CACHE_DIR"] = cache
      env.pop("AUTONTK_JAX_CACHE", None)
      env["PYTHONPATH"] = os.pathsep.join(
          [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
          + [ROOT])
      job_path = os.path.join(cache, "job.json")
      job = {"case": case.to_json()}
      with open(job_path, "w") as fh:
        json.dump(job, fh)
      first = _spawn("plan", job_path, env)
      rec: dict[str, Any] = {"case": case.name, "plan_process": first}
      if "error" in first:
        rec["error"] = first["error"]
        log(f"[plancache] {case.name}: n/a ({first['error'][-120:]})")
        results.append(rec)
        continue
      job["method"] = first["method"]
      with open(job_path, "w") as fh:
        json.dump(job, fh)
      if not first.get("plan_is_plain", True):
        rec["note"] = ("the plan is chunked/configured: the explicit process "
                       "runs the plain method, so the overhead is indicative")
      hits, explicit = [], []
      for _ in range(repeats):
        hits.append(_spawn("hit", job_path, env))
        explicit.append(_spawn("explicit", job_path, env))
      ok_h = [h["first_call_s"] for h in hits if "first_call_s" in h]
      ok_e = [e["first_call_s"] for e in explicit if "first_call_s" in e]
      rec.update(hit_processes=hits, explicit_processes=explicit)
      if ok_h and ok_e:
        rec["hit_first_call_s"] = statistics.median(ok_h)
        rec["explicit_first_call_s"] = statistics.median(ok_e)
        rec["overhead_s"] = rec["hit_first_call_s"] - rec[
            "explicit_first_call_s"]
        rec["cold_first_call_s"] = first["first_call_s"]
        log(f"[plancache] {case.name}: plan {first['plan']}; cold "
            f"{first['first_call_s']:.2f} s, hit "
            f"{rec['hit_first_call_s'] * 1e3:.0f} ms, explicit "
            f"{rec['explicit_first_call_s'] * 1e3:.0f} ms, overhead "
            f"{rec['overhead_s'] * 1e3:+.0f} ms")
      else:
        rec["error"] = next((h.get("error") for h in hits + explicit
                             if "error" in h), "no result")
        log(f"[plancache] {case.name}: n/a ({str(rec['error'])[-120:]})")
      results.append(rec)
  return {"cases": results}


def markdown(res: dict[str, Any]) -> str:
  rows = []
  for c in res["cases"]:
    if "overhead_s" not in c:
      rows.append([c["case"], "n/a", "", "", "", str(c.get("error", ""))[:60]])
      continue
    rows.append([c["case"], c["plan_process"].get("plan"),
                 report.ms(c["cold_first_call_s"]),
                 report.ms(c["hit_first_call_s"]),
                 report.ms(c["explicit_first_call_s"]),
                 f"{c['overhead_s'] * 1e3:+.0f} ms"])
  return "\n".join([
      "Second-process first call (target: overhead ≤ 50 ms). Medians over "
      "fresh processes sharing one cache directory; imports excluded.", "",
      report.table(["case", "plan", "cold first call (plans)",
                    "cache-hit first call", "explicit method first call "
                    "(cached compile)", "overhead"], rows)])


if __name__ == "__main__":
  _child(sys.argv[1], sys.argv[2])
