"""autontk's methods and its planner, plus the plain-JAX ``jacrev`` peer.

Runs in the main environment (current JAX). Every explicit method is called
through the public API, ``autontk.ntk_fn(f, implementation=...,
trace_axes=..., vmap_axes=0)``; ``"auto"`` is timed as planning
(``ntk.plan``) plus compiling and running the chosen plan. A method that fails
shows as an ``{"error": ...}`` record ("n/a" in the tables), never as a
crash.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np

import jax
import jax.numpy as jnp

import autontk
from bench import measure, phases, timing
from bench.cases import Case
from bench.zoo import specs

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD", "auto": "auto"}


def device_arrays(case: Case):
  """``(params, x1, x2)`` of a case as device arrays."""
  params, x1, x2 = case.arrays()
  return ({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x1),
          jnp.asarray(x2))


def _kernel(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def run_explicit(case: Case, method: str, policy: measure.TimingPolicy,
                 budget_bytes: float | None = None,
                 arrays=None, max_run_flops: float | None = None
                 ) -> dict[str, Any]:
  params, x1, x2 = arrays or device_arrays(case)
  f = specs.apply(case.spec)
  try:
    ntk = autontk.ntk_fn(f, trace_axes=case.trace_axes, vmap_axes=0,
                         implementation=method)
    rec = measure.measure_jit(lambda a, b, p: ntk(a, b, p), (x1, x2, params),
                             policy, keep_result=True,
                             budget_bytes=budget_bytes,
                             max_run_flops=max_run_flops, keep_call=True,
                             compiler_options=autontk.compiler_options())
  except Exception as e:  # noqa: BLE001 - a missing method is "n/a"
    return measure.error_record(e)
  if "_result" in rec:
    rec["_result"] = _kernel(rec["_result"])
  return rec


def sd_phases(case: Case, arrays=None) -> dict[str, Any]:
  """Structured derivatives' time split between its cotangents and its pair
  products (:func:`bench.phases.split`), or an error record."""
  params, x1, x2 = arrays or device_arrays(case)
  ntk = autontk.ntk_fn(specs.apply(case.spec), trace_axes=case.trace_axes,
                       vmap_axes=0, implementation="structured_derivatives")
  return phases.split_ntk(ntk, x1, x2, params)


def _is_plain(plan) -> bool:
  """The plan is exactly what ``implementation=<its method>`` runs."""
  if plan.chunking is not None:
    return False
  if plan.config is None:
    return True
  try:
    return plan.config == type(plan.config)()
  except Exception:  # noqa: BLE001
    return False


def run_auto(case: Case, policy: measure.TimingPolicy,
             explicit: dict[str, dict[str, Any]],
             budget_bytes: float | None = None,
             auto_options: dict[str, Any] | None = None,
             arrays=None) -> dict[str, Any]:
  """Planning time, the chosen plan, and the time of running it.

  When the plan is exactly an explicit method's plan (no chunking, default
  config) its run time is that method's measurement (same executable); else
  the plan is compiled and timed here.
  """
  params, x1, x2 = arrays or device_arrays(case)
  f = specs.apply(case.spec)
  opts = dict(auto_options or {})
  try:
    ntk = autontk.ntk_fn(f, trace_axes=case.trace_axes, vmap_axes=0,
                         implementation="auto", **opts)
    gc.collect()  # as before every timed first call (bench.measure)
    t0 = time.perf_counter()
    plan = ntk.plan(x1, x2, params)
    plan_s = time.perf_counter() - t0
  except Exception as e:  # noqa: BLE001
    return measure.error_record(e)
  method = plan.implementation.name.lower()
  rec: dict[str, Any] = {"plan": plan.describe(), "plan_method": method,
                         "plan_chunked": plan.chunking is not None,
                         "planning_s": plan_s, "auto_options": sorted(opts)}
  if not _time_plan(rec, ntk, plan, (x1, x2, params), policy, explicit):
    return rec
  if "compile_s" in rec:
    rec["planning_over_compile"] = plan_s / max(rec["compile_s"], 1e-9)
  return rec


def _measure_plan(ntk, plan, args, policy) -> dict[str, Any]:
  """Times a plan as autontk runs it: a host-loop chunking is not jitted
  from outside (that would trace every block into one program)."""
  if getattr(plan.chunking, "host_loop", False):
    rec = measure.measure_call(lambda a, b, p: ntk.execute(plan, a, b, p),
                              args, policy, keep_result=True)
    try:  # no single program: take FLOPs and peak from the planner's report
      est = next(e for e in ntk.report(*args).estimates if e.plan == plan)
      rec.update(flops=est.flops, peak_bytes=est.peak_memory,
                 cost_source="planner estimate")
    except Exception:  # noqa: BLE001 - report is optional
      pass
    return rec
  return measure.measure_jit(lambda a, b, p: ntk.execute(plan, a, b, p),
                            args, policy, keep_result=True,
                            compiler_options=autontk.compiler_options())


def run_tuned(case: Case, policy: measure.TimingPolicy,
              explicit: dict[str, dict[str, Any]], budget_s: float = 30.0,
              arrays=None) -> dict[str, Any]:
  """``autontk.tune`` (timings on this device), then the tuned plan's time.

  The tuned plan is timed here like every other plan (not with the tuner's
  own numbers), so its regret is comparable with auto's.
  """
  params, x1, x2 = arrays or device_arrays(case)
  f = specs.apply(case.spec)
  try:
    t0 = time.perf_counter()
    result = autontk.tune(f, x1, x2, params, trace_axes=case.trace_axes, vmap_axes=0,
                  budget_s=budget_s, cache=False, progress=False)
    tune_s = time.perf_counter() - t0
    plan = result.plan
    ntk = autontk.ntk_fn(f, trace_axes=case.trace_axes, vmap_axes=0,
                         implementation=plan.implementation.name.lower())
  except Exception as e:  # noqa: BLE001
    return measure.error_record(e)
  method = plan.implementation.name.lower()
  rec: dict[str, Any] = {"plan": plan.describe(), "plan_method": method,
                         "plan_chunked": plan.chunking is not None,
                         "planning_s": tune_s}
  _time_plan(rec, ntk, plan, (x1, x2, params), policy, explicit)
  return rec


def _time_plan(rec: dict[str, Any], ntk, plan, args, policy,
               explicit: dict[str, dict[str, Any]]) -> bool:
  """Adds ``plan``'s timing to ``rec``; ``False`` if timing it failed.

  A plan that is exactly an explicit method's plan reuses that method's
  measurement (same executable); any other plan is compiled and timed.
  """
  method = plan.implementation.name.lower()
  same = explicit.get(method, {})
  if _is_plain(plan) and "median_s" in same:
    rec.update({k: v for k, v in same.items() if not k.startswith("_")})
    rec["reused_measurement_of"] = method
    return True
  try:
    m = _measure_plan(ntk, plan, args, policy)
  except Exception as e:  # noqa: BLE001
    rec.update(measure.error_record(e))
    return False
  m["_result"] = _kernel(m.pop("_result"))
  rec.update(m)
  return True


def jacrev_kernel_fn(case: Case):
  """Plain JAX: ``jax.jacrev`` of the batch, then ``einsum`` per leaf."""
  f = specs.apply(case.spec)

  def ntk(x1, x2, params):
    j1 = jax.jacrev(f)(params, x1)
    j2 = jax.jacrev(f)(params, x2)
    total = 0.0
    for k in params:
      a = j1[k].reshape(j1[k].shape[:2] + (-1,))
      b = j2[k].reshape(j2[k].shape[:2] + (-1,))
      if case.trace:
        total = total + jnp.einsum("naq,maq->nm", a, b)
      else:
        total = total + jnp.einsum("naq,mbq->nmab", a, b)
    return total / case.out_dim if case.trace else total

  return ntk


def run_jacrev(case: Case, policy: measure.TimingPolicy,
               budget_bytes: float | None = None, arrays=None,
               max_run_flops: float | None = None):
  params, x1, x2 = arrays or device_arrays(case)
  try:
    rec = measure.measure_jit(jacrev_kernel_fn(case), (x1, x2, params), policy,
                             keep_result=True, budget_bytes=budget_bytes,
                             max_run_flops=max_run_flops)
  except Exception as e:  # noqa: BLE001
    return measure.error_record(e)
  if "_result" in rec:
    rec["_result"] = _kernel(rec["_result"])
  return rec


def warm_up() -> None:
  """One untimed tiny NTK per method, and one auto plan (the peers'
  runners warm up the same way), before the first timed case."""
  f, params, x1, x2 = specs.warm_up_inputs()
  for m in EXPLICIT + ("auto",):
    try:
      ntk = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=m)
      jax.block_until_ready(jax.jit(ntk)(x1, x2, params) if m != "auto"
                            else ntk(x1, x2, params))
    except Exception:  # noqa: BLE001 - a failing method shows in its case
      pass


def run_case(case: Case, policy: measure.TimingPolicy, *,
             methods: tuple[str, ...] = EXPLICIT, auto: bool = True,
             jacrev: bool = False, budget_bytes: float | None = None,
             auto_options: dict[str, Any] | None = None,
             max_run_flops: float | None = None,
             log=print) -> dict[str, dict[str, Any]]:
  """Records per method name (plus ``"auto"`` and ``"jax_jacrev"``)."""
  arrays = device_arrays(case)
  out: dict[str, dict[str, Any]] = {}
  for m in methods:
    out[m] = run_explicit(case, m, policy, budget_bytes, arrays,
                          max_run_flops)
    log(f"  autontk {SHORT.get(m, m):5s} {fmt(out[m])}")
  # The methods' medians are compared with each other (regret, best
  # method): re-time them interleaved so machine noise hits all alike.
  timing.interleave([out[m] for m in methods])
  for m in methods:
    out[m].pop("_call", None)
  if len(methods) > 1:
    log("  interleaved: " + "  ".join(
        f"{SHORT.get(m, m)} {out[m]['median_s'] * 1e3:.3f} ms"
        for m in methods if "median_s" in out[m]))
  if auto:
    out["auto"] = run_auto(case, policy, out, budget_bytes, auto_options,
                           arrays)
    log(f"  autontk auto  {fmt(out['auto'])} plan={out['auto'].get('plan')}")
  if jacrev:
    out["jax_jacrev"] = run_jacrev(case, policy, budget_bytes, arrays,
                                   max_run_flops)
    log(f"  jax jacrev    {fmt(out['jax_jacrev'])}")
  return out


def fmt(rec: dict[str, Any]) -> str:
  if "error" in rec:
    return "n/a (" + rec["error"][:80] + ")"
  if rec.get("over_budget"):
    return f"over budget (peak {rec['peak_bytes'] / 2**20:.0f} MiB)"
  fl = rec.get("flops")
  if "median_s" not in rec:
    return f"not run (flops {(fl or float('nan')):.3g})"
  return (f"median {rec['median_s'] * 1e3:9.2f} ms  first "
          f"{rec['first_call_s']:6.2f} s  flops "
          f"{(fl or float('nan')):.3g}")
