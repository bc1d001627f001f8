"""``machine_speed``: each method's rate against the machine's matmul peak.

The models of :mod:`bench.zoo.families` (attention, an LM with a gathered
and tied embedding, depthwise convolutions, blocks scanned over layers, an
RNN, and an MLP and a CNN as controls), each called as a user calls it:
``ntk = autontk.ntk_fn(f, trace_axes=..., vmap_axes=0, implementation=m)``
then ``ntk(x1, x2, params)`` (jitted by the library, float32). Per model and
method: the median time (:func:`bench.timing.interleaved`, all methods of a
model and a 2048² float32 matmul timed together, so the matmul's rate is the
peak under the same load), the compiled program's FLOPs and bytes accessed
(XLA's cost analysis of the same call on the model with its scans unrolled,
since the analysis counts a loop body once), the rate as a percentage of the
matmul's, and auto's pick and regret (its time over the fastest explicit
method's); the same for a memory stream (an 8 MiB array scaled: the
programs' working sets are cache-resident, and XLA's "bytes accessed"
counts every operand read, cached or not), which
gives the roofline: the longer of the FLOPs at the matmul's rate and the
bytes at the stream's, as a percentage of the time taken, and which of the
two bounds it. A call whose first call takes over 5 s is timed once more on
its own rather than interleaved; a program whose compiled peak memory is
over 10 GiB is compiled, not run.

A baseline run (``machine_speed_baseline.json`` beside the results, a run of
this suite recorded with an earlier version of the library) adds a "before"
column for structured derivatives.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import autontk
from bench import measure, phases, record, timing
from bench.zoo.families import FAMILIES

METHODS = ("jacobian_contraction", "ntk_vector_products",
           "structured_derivatives", "auto")
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD", "auto": "auto"}
MATMUL_N = 2048
STREAM_N = 2 * 2**20
BASELINE = "machine_speed_baseline.json"
BUDGET_BYTES = 10 * 2**30  # compiled peak above this: compiled, not run
SLOW_S = 5.0  # a first call slower than this is timed once more, alone


def _ntk(model, method: str):
  return autontk.ntk_fn(model.f, trace_axes=model.trace_axes,
                        diagonal_axes=model.diagonal_axes, vmap_axes=0,
                        implementation=method)


def _cost(model, method: str) -> dict[str, float]:
  """Compiled FLOPs, bytes accessed and peak memory of the call (scans
  unrolled)."""
  fn = _ntk(model, method)
  try:
    compiled = jax.jit(lambda p, a, b: fn(a, b, p)).lower(
        model.params, model.x1, model.x2).compile()
  except Exception as e:  # noqa: BLE001 - recorded, not fatal
    return {"cost_error": f"{type(e).__name__}: {e}"[:200]}
  cost = measure.cost_of(compiled)
  return {"flops": cost["flops"], "bytes": cost["bytes_accessed"],
          "peak_bytes": cost["peak_bytes"]}


def _stream():
  """An 8 MiB array scaled (16 MiB moved): the bandwidth of the cache these
  programs' working sets live in, which XLA's bytes accessed counts."""
  a = jnp.ones((STREAM_N,), jnp.float32)
  scale = jax.jit(lambda a: a * 2.0)
  jax.block_until_ready(scale(a))
  return lambda: scale(a)


def _matmul():
  a = jax.random.normal(jax.random.PRNGKey(0), (MATMUL_N, MATMUL_N),
                        jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  return lambda: mm(a)


def run_model(name: str, quick: bool, log=print) -> dict[str, Any]:
  """Every method of one family: first call, cost, interleaved median."""
  model, twin = FAMILIES[name](False), FAMILIES[name](True)
  x1, x2, params = model.x1, model.x2, model.params
  calls = {"matmul": _matmul(), "stream": _stream()}
  records, ref = [], None
  for method in METHODS:
    rec = {"method": method}
    records.append(rec)
    if method != "auto":
      rec.update(_cost(twin, method))
      if (rec.get("peak_bytes") or 0) > BUDGET_BYTES:
        rec["over_budget"] = True
        log(f"  {SHORT[method]:5s} over budget "
            f"({rec['peak_bytes'] / 2**30:.1f} GiB): compiled, not run")
        continue
    fn = _ntk(model, method)
    if method == "auto":
      plan = fn.plan(x1, x2, params)
      rec["auto_pick"] = plan.implementation.name.lower()
      rec["auto_chunked"] = plan.chunking is not None
      if not rec["auto_chunked"] and any(
          r.get("over_budget") for r in records
          if r["method"] == rec["auto_pick"]):
        rec["over_budget"] = True
        log("  auto  picks a program over budget: not run")
        continue
    try:
      t0 = time.perf_counter()
      k = np.asarray(jax.block_until_ready(fn(x1, x2, params)), np.float64)
      rec["first_call_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
      rec["error"] = f"{type(e).__name__}: {e}"[:300]
      log(f"  {SHORT[method]:5s} error {rec['error']}")
      continue
    ref = k if ref is None else ref
    rec["rel_err"] = float(np.max(np.abs(k - ref)) / np.max(np.abs(ref)))
    call = (lambda fn=fn: fn(x1, x2, params))
    if rec["first_call_s"] > SLOW_S:  # too slow to repeat: one more call
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      rec.update(median_s=time.perf_counter() - t0, repeats=1)
    else:
      calls[method] = call
  stats = timing.interleaved(calls, rounds=5 if quick else 9,
                             time_s=3.0 if quick else 10.0)
  peak_s = stats["matmul"]["median_s"]
  peak = 2 * MATMUL_N ** 3 / peak_s
  bandwidth = 8 * STREAM_N / stats["stream"]["median_s"]
  for rec in records:
    st = stats.get(rec["method"])
    if st:
      rec.update(median_s=st["median_s"], min_s=st["min_s"],
                 repeats=st["repeats"])
    if "median_s" not in rec:
      continue
    if rec.get("flops"):
      rec["flops_per_s"] = rec["flops"] / rec["median_s"]
      rec["pct_peak"] = 100 * rec["flops_per_s"] / peak
    if rec.get("flops") and rec.get("bytes"):
      # The roofline: the time the FLOPs need at the matmul's rate or the
      # bytes at the stream's, whichever is longer, over the time taken.
      bound = max(rec["flops"] / peak, rec["bytes"] / bandwidth)
      rec["bound"] = ("bytes" if rec["bytes"] / bandwidth > rec["flops"] /
                      peak else "flops")
      rec["pct_roofline"] = 100 * bound / rec["median_s"]
    log(f"  {SHORT[rec['method']]:5s} {1e3 * rec['median_s']:9.2f} ms  "
        f"{rec.get('pct_peak', float('nan')):5.1f} % of peak  "
        f"err {rec['rel_err']:.1e}")
  _phase_split(model, records)
  out = {"name": name, "family": model.family, "note": model.note,
         "matmul_s": peak_s, "peak_flops_per_s": peak,
         "bandwidth_bytes_per_s": bandwidth, "records": records}
  out.update(_regret(records))
  return out


def _phase_split(model, records: list[dict]) -> None:
  """Structured derivatives' time split between its cotangents and its pair
  products (:mod:`bench.phases`), where it ran more than once."""
  sd = next((r for r in records if r["method"] == "structured_derivatives"
             and (r.get("repeats") or 0) > 1), None)
  if sd is None:
    return
  sd["phases"] = phases.split_ntk(_ntk(model, "structured_derivatives"),
                                  model.x1, model.x2, model.params)


def _regret(records: list[dict]) -> dict[str, Any]:
  by = {r["method"]: r for r in records if "median_s" in r}
  best = min((by[m]["median_s"] for m in METHODS[:3] if m in by),
             default=None)
  auto = by.get("auto")
  if not best or not auto:
    return {}
  return {"auto_pick": auto.get("auto_pick"),
          "auto_regret": auto["median_s"] / best,
          "best": min((m for m in METHODS[:3] if m in by),
                      key=lambda m: by[m]["median_s"])}


def _baseline() -> dict[str, Any] | None:
  tag = record.machine_tag(record.machine_info())
  return record.load(record.results_dir(tag), BASELINE[:-5])


def run(cfg, log=print) -> dict[str, Any]:
  """The suite: every family of :data:`bench.zoo.families.FAMILIES`."""
  out: dict[str, Any] = {"cases": []}
  base = _baseline()
  if base:
    out["baseline"] = {"date_utc": base.get("date_utc"),
                       "cases": base.get("cases", [])}
  for name in FAMILIES:
    if not cfg.selected(name):
      continue
    log(f"machine_speed: {name}")
    out["cases"].append(run_model(name, cfg.quick, log))
    cfg.save_partial(out)
  return out


def _cell(rec: dict | None, key: str, fmt: str) -> str:
  if not rec or rec.get(key) is None:
    return "n/a"
  return fmt.format(rec[key])


def _sd(case: dict) -> dict | None:
  return next((r for r in case["records"]
               if r["method"] == "structured_derivatives"), None)


def markdown(res: dict[str, Any]) -> str:
  """% of matmul peak per family and method; details per model."""
  before = {c["name"]: _sd(c) for c in
            (res.get("baseline") or {}).get("cases", [])}
  lines = ["### Rate against the matmul peak", "",
           "Compiled FLOPs (XLA's cost analysis, scans unrolled) over the "
           "median time, as a percentage of a 2048² float32 matmul's rate "
           "timed interleaved with the methods in the same process "
           "(a shared machine: other jobs ran beside it). SD before: the "
           "baseline run" + (f" of {res['baseline']['date_utc']} UTC"
                             if res.get("baseline") else " (none)") + ".",
           "", "| model | family | JC | NTVP | SD | SD before | SD ms | "
           "SD ms before | SD roofline (bound) | SD cotangents | auto pick | "
           "auto regret |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for case in res["cases"]:
    recs = {r["method"]: r for r in case["records"]}
    cells = [_cell(recs.get(m), "pct_peak", "{:.1f} %") for m in METHODS[:3]]
    sd, old = recs.get("structured_derivatives") or {}, before.get(
        case["name"])
    roof = (f"{sd['pct_roofline']:.0f} % ({sd['bound']})"
            if sd.get("pct_roofline") else "n/a")
    cot = (sd.get("phases") or {}).get("cotangents")
    lines.append(
        f"| {case['name']} | {case['family']} | " + " | ".join(cells) +
        f" | {_cell(old, 'pct_peak', '{:.1f} %')} | {_ms(sd)} | "
        f"{_ms(old or {})} | {roof} | "
        f"{f'{cot:.0%}' if cot is not None else 'n/a'} | "
        f"{SHORT.get(case.get('auto_pick') or '', 'n/a')} | "
        f"{_cell(case, 'auto_regret', '{:.2f}')} |")
  lines += ["", "The rates of the matmul and the stream are taken in the same "
            "interleaved rounds as the methods; on a shared machine they move "
            "with its load, and the percentages with them. `SD cotangents`: "
            "the share of structured derivatives' time in its probing passes "
            "(a `jax.profiler` trace summed by the method's named scopes; the "
            "rest is its pair products). "
            "Compiled FLOPs and bytes do not move: compare them, and the "
            "times within one model. Where the time goes per family, what "
            "bounds it and what was changed: `docs/structured.md`, \"Where "
            "the time goes, per model family\".", "", "### Per model", ""]
  for case in res["cases"]:
    lines += [f"**{case['name']}** ({case['note']}); matmul "
              f"{case['peak_flops_per_s'] / 1e9:.0f} GFLOP/s, stream "
              f"{case.get('bandwidth_bytes_per_s', 0) / 1e9:.1f} GB/s", "",
              "| method | median ms | GFLOP | MB accessed | GFLOP/s | "
              "% of peak | FLOP/byte | bound | % of roofline | rel. err |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in case["records"]:
      fl, by = r.get("flops"), r.get("bytes")
      rate = (r.get("flops_per_s") or 0) / 1e9
      lines.append(
          f"| {SHORT[r['method']]} | {_ms(r)} | {_g(fl)} | {_mb(by)} | "
          f"{f'{rate:.1f}' if rate else 'n/a'} | "
          f"{_cell(r, 'pct_peak', '{:.1f}')} | "
          f"{f'{fl / by:.1f}' if fl and by else 'n/a'} | "
          f"{r.get('bound', 'n/a')} | {_cell(r, 'pct_roofline', '{:.1f}')} | "
          f"{_cell(r, 'rel_err', '{:.1e}')} |")
      if r.get("over_budget"):
        lines[-1] = lines[-1].replace(f"| {_ms(r)} |", "| over budget |", 1)
    lines.append("")
  return "\n".join(lines)


def _ms(r: dict) -> str:
  return "n/a" if r.get("median_s") is None else f"{1e3 * r['median_s']:.2f}"


def _g(v) -> str:
  return "n/a" if not v else f"{v / 1e9:.3f}"


def _mb(v) -> str:
  return "n/a" if not v else f"{v / 1e6:.1f}"
