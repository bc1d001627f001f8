"""``xla_options``: the library's XLA options against XLA's defaults.

autontk compiles its programs with :func:`autontk.compiler_options` (on
XLA:CPU: YNNPACK for each matrix product alone). For the reference cases
and the families of :mod:`bench.zoo.families`, each explicit method's kernel
call ``ntk(x1, x2, params)`` is compiled twice at top level, with XLA's
defaults and with the library's options (the same HLO; other kernels), and
the two executables are timed interleaved (:func:`bench.timing.interleaved`)
and their kernels compared. A program over :data:`MAX_FLOPS` compiled FLOPs
or :data:`MAX_PEAK_BYTES` compiled peak memory is not run. This is a tuning
of one backend: on a platform where the options are ``None`` the suite
records that and times nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import autontk
from bench import autontk_runner
from bench import cases as cases_mod
from bench import measure, timing
from bench.report import geomean
from bench.zoo import specs
from bench.zoo.families import FAMILIES

METHODS = ("structured_derivatives", "jacobian_contraction",
           "ntk_vector_products")
SHORT = {"structured_derivatives": "SD", "jacobian_contraction": "JC",
         "ntk_vector_products": "NTVP"}
MAX_FLOPS = 2e10
MAX_PEAK_BYTES = 4 * 2**30


def _models(cfg):
  """``(name, f, kernel kwargs, (x1, x2, params))`` of every model."""
  for case in cases_mod.reference(cfg.quick):
    if cfg.selected(case.name):
      params, x1, x2 = autontk_runner.device_arrays(case)
      yield (case.name, specs.apply(case.spec),
             {"trace_axes": case.trace_axes}, (x1, x2, params))
  for name, make in FAMILIES.items():
    if cfg.selected(name):
      m = make(False)
      yield (name, m.f, {"trace_axes": m.trace_axes,
                         "diagonal_axes": m.diagonal_axes},
             (m.x1, m.x2, m.params))


def _compiled(ntk, args, options):
  lowered = jax.jit(lambda a, b, p: ntk(a, b, p)).lower(*args)
  return lowered.compile(compiler_options=options)


def run_method(f, kw, args, method, options, rounds) -> dict[str, Any]:
  """One method of one model: both executables, timed and compared."""
  rec: dict[str, Any] = {"method": method}
  try:
    ntk = autontk.ntk_fn(f, vmap_axes=0, implementation=method, **kw)
    default = _compiled(ntk, args, None)
    cost = measure.cost_of(default)
    rec.update(flops=cost.get("flops"), peak_bytes=cost.get("peak_bytes"))
    if (cost.get("flops") or 0) > MAX_FLOPS or (
        cost.get("peak_bytes") or 0) > MAX_PEAK_BYTES:
      rec["skipped"] = "over the suite's FLOP or memory limit"
      return rec
    tuned = _compiled(ntk, args, options)
    k0 = np.asarray(default(*args), np.float64)
    k1 = np.asarray(tuned(*args), np.float64)
  except Exception as e:  # noqa: BLE001 - recorded, not fatal
    rec["error"] = f"{type(e).__name__}: {e}"[:300]
    return rec
  rec["rel_diff"] = float(np.max(np.abs(k1 - k0)) / np.max(np.abs(k0)))
  stats = timing.interleaved({"defaults": lambda: default(*args),
                              "options": lambda: tuned(*args)},
                             rounds=rounds, time_s=1.0)
  rec.update(defaults_s=stats["defaults"]["median_s"],
             options_s=stats["options"]["median_s"])
  rec["speedup"] = rec["defaults_s"] / rec["options_s"]
  return rec


def run(cfg, log=print) -> dict[str, Any]:
  """The suite: every model and explicit method."""
  options = autontk.compiler_options()
  out: dict[str, Any] = {"options": options, "cases": []}
  if not options:
    log("xla_options: the library compiles with XLA's defaults here")
    return out
  for name, f, kw, args in _models(cfg):
    log(f"xla_options: {name}")
    case = {"name": name, "records": []}
    for method in METHODS:
      rec = run_method(f, kw, args, method, options, 7 if cfg.quick else 15)
      case["records"].append(rec)
      log(f"  {SHORT[method]:5s} " + (
          f"{rec['speedup']:.2f}x" if "speedup" in rec else
          rec.get("skipped") or rec.get("error", "")))
    out["cases"].append(case)
    cfg.save_partial(out)
  return out


def markdown(res: dict[str, Any]) -> str:
  """Per model and method: both medians and their ratio."""
  if not res.get("options"):
    return "The library compiles with XLA's defaults on this platform.\n"
  lines = ["### The library's XLA options against XLA's defaults", "",
           f"Options: `{res['options']}`. Median ms per call of the same "
           "kernel call compiled both ways, timed interleaved; "
           "`defaults / options` > 1 means the options are faster. "
           "`rel diff`: the two kernels' largest relative difference.", "",
           "| model | method | XLA defaults | autontk's options | "
           "defaults / options | rel diff |", "|---|---|---|---|---|---|"]
  per: dict[str, list[float]] = {m: [] for m in METHODS}
  for case in res["cases"]:
    for r in case["records"]:
      if "speedup" not in r:
        why = r.get("skipped") or r.get("error", "n/a")
        lines.append(f"| {case['name']} | {SHORT[r['method']]} | "
                     f"{why[:60]} | | | |")
        continue
      per[r["method"]].append(r["speedup"])
      lines.append(f"| {case['name']} | {SHORT[r['method']]} | "
                   f"{1e3 * r['defaults_s']:.3g} | {1e3 * r['options_s']:.3g}"
                   f" | {r['speedup']:.2f}× | {r['rel_diff']:.1e} |")
  lines += ["", "Geometric mean of `defaults / options`: " + ", ".join(
      f"{SHORT[m]} {g:.2f}× ({len(per[m])} models)"
      for m in METHODS if (g := geomean(per[m])) is not None) + ".", ""]
  return "\n".join(lines)
