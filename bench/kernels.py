"""What the kernel options cost: parameter subsets, groups, the pseudo-NTK.

``python -m bench.kernels [--quick] [--tag TAG]`` writes
``bench/results/<tag>/kernels.json`` and ``kernels.md`` (default tag
``kernels-<backend>-<cores>core``). Also runs as the ``kernels`` suite of
``python -m bench``.

Three parts, every kernel called as users call it (``ntk(x1, None,
params)``, no outer ``jax.jit``), first call excluded, the candidates of a
case timed interleaved (round robin), so a busy moment of a shared machine
hits all of them alike:

* ``subset``: the NTK with respect to the last layer (``wrt=``) of a deep
  MLP, a CNN and an attention block against the full NTK: median time and
  compiled FLOPs of auto's plan and of each explicit method, and their
  ratios (from the ``regret`` part's measurements).
* ``regret``: on full, subset (``wrt``) and grouped (``groups="layer"``)
  kernels of several models, every explicit method and ``auto`` with the
  cost model alone (no tuning, empty plan cache); regret = time(auto) /
  time(fastest explicit method).
* ``pseudo``: the pseudo-NTK (``pntk_fn``) against the full NTK of models
  with many logits O, traced (``trace_axes=(-1,)``) and full (O×O blocks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")


def _normal(seed: int, shape, scale: float = 1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


# Models -------------------------------------------------------------------------

def deep_mlp(depth: int, width: int, d_in: int, n_out: int, n: int):
  dims = [d_in] + [width] * (depth - 1) + [n_out]
  params = [{"w": _normal(i, (a, b), a ** -0.5), "b": jnp.zeros(b)}
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]

  def f(p, x):
    for layer in p[:-1]:
      x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ p[-1]["w"] + p[-1]["b"]

  return f, params, _normal(99, (n, d_in)), str(len(params) - 1)


def cnn(channels: tuple[int, ...], hw: int, n_out: int, n: int):
  params = {}
  c_in = 3
  for i, c in enumerate(channels):
    params[f"conv{i}"] = {"w": _normal(i, (3, 3, c_in, c), (9 * c_in) ** -.5),
                          "b": jnp.zeros(c)}
    c_in = c
  params["head"] = {"w": _normal(50, (c_in, n_out), c_in ** -0.5),
                    "b": jnp.zeros(n_out)}
  dn = ("NHWC", "HWIO", "NHWC")

  def f(p, x):
    for i in range(len(channels)):
      layer = p[f"conv{i}"]
      x = lax.conv_general_dilated(x, layer["w"], (1, 1), "SAME",
                                   dimension_numbers=dn) + layer["b"]
      x = jax.nn.relu(x)
    x = x.mean(axis=(1, 2))
    return x @ p["head"]["w"] + p["head"]["b"]

  return f, params, _normal(98, (n, hw, hw, 3)), "head"


def attention(t: int, d: int, n_out: int, n: int):
  params = {"emb": {"w": _normal(0, (8, d), 8 ** -0.5)},
            "attn": {k: _normal(i + 1, (d, d), d ** -0.5)
                     for i, k in enumerate(("q", "k", "v"))},
            "mlp": {"w": _normal(5, (d, 2 * d), d ** -0.5),
                    "v": _normal(6, (2 * d, d), (2 * d) ** -0.5)},
            "head": {"w": _normal(7, (d, n_out), d ** -0.5)}}

  def f(p, x):
    h = x @ p["emb"]["w"]
    q, k, v = (h @ p["attn"][c] for c in "qkv")
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / math.sqrt(d), axis=-1)
    h = h + a @ v
    h = h + jax.nn.gelu(h @ p["mlp"]["w"]) @ p["mlp"]["v"]
    return h.mean(axis=-2) @ p["head"]["w"]

  return f, params, _normal(97, (n, t, 8)), "head"


def models(quick: bool) -> dict[str, tuple]:
  if quick:
    return {
        "mlp_d8_w256": deep_mlp(8, 256, 64, 10, 32),
        "mlp_d3_w1024_o1": deep_mlp(3, 1024, 32, 1, 64),
        "cnn_3x32_16px": cnn((16, 32, 32), 16, 10, 16),
        "attention_t8_d32": attention(8, 32, 10, 16),
    }
  return {
      "mlp_d16_w1024": deep_mlp(16, 1024, 256, 10, 64),
      "mlp_d3_w4096_o1": deep_mlp(3, 4096, 32, 1, 256),
      "cnn_4x64_32px": cnn((32, 64, 64, 64), 32, 10, 32),
      "attention_t32_d128": attention(32, 128, 10, 32),
  }


# Measuring ----------------------------------------------------------------------

def _timed(ntk, args) -> dict[str, Any]:
  """First call, then a few timed calls; keeps the call for interleaving."""
  t0 = time.perf_counter()
  jax.block_until_ready(ntk(*args))
  first = time.perf_counter() - t0
  times = []
  while len(times) < 3 or (sum(times) < 0.3 and len(times) < 20):
    t0 = time.perf_counter()
    jax.block_until_ready(ntk(*args))
    times.append(time.perf_counter() - t0)
  return {"first_call_s": first, "times": times,
          "_call": lambda: jax.block_until_ready(ntk(*args))}


def _interleave(recs: list[dict[str, Any]], budget_s: float) -> None:
  """Round robin, the order rotated every round (no candidate always runs
  right after the same one). Candidates over 10x the fastest are settled by
  their first timings and left out (a second-long call would disturb the
  millisecond ones around it)."""
  fastest = min(statistics.median(r["times"]) for r in recs)
  close = [r for r in recs if statistics.median(r["times"]) <= 10 * fastest]
  per_round = sum(statistics.median(r["times"]) for r in close)
  rounds = int(min(max(budget_s / max(per_round, 1e-9), 15), 300))
  for i in range(rounds):
    for r in close[i % len(close):] + close[:i % len(close)]:
      t0 = time.perf_counter()
      r["_call"]()
      r["times"].append(time.perf_counter() - t0)
  for r in recs:
    r["median_s"] = statistics.median(r["times"])
    r["min_s"] = min(r["times"])
    r["repeats"] = len(r.pop("times"))
    r.pop("_call")


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
  import autontk
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
  _interleave([r for r in recs.values() if "_call" in r], budget_s)
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


def regret_part(quick: bool, budget_s: float, log) -> list[dict[str, Any]]:
  rows = []
  for name, (f, params, x, last) in models(quick).items():
    variants = {"full": {}, "subset_last": {"wrt": last},
                "grouped_layer": {"groups": "layer"}}
    for variant, options in variants.items():
      res = measure(f, params, x, budget_s, **options)
      rows.append({"model": name, "kernel": variant, "wrt": last, **res})
      log(f"regret {name} {variant}: {res.get('regret')}")
  return rows


def pseudo_part(quick: bool, budget_s: float, log) -> list[dict[str, Any]]:
  import autontk
  rows = []
  outs = (100,) if quick else (100, 1000)
  for n_out in outs:
    f, params, x, _ = deep_mlp(3, 256, 64, n_out, 16)
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
      _interleave(list(recs.values()), budget_s)
      ratio = {impl: _ratio(recs[f"pntk_{impl}"], recs[f"ntk_{impl}"])
               for impl in ("auto", "jacobian_contraction")}
      rows.append({"model": f"mlp_64-256-256-{n_out}", "n_out": n_out,
                   "trace_axes": list(trace), "results": recs,
                   "ratio": ratio})
      log(f"pseudo O={n_out} trace={trace}: {ratio}")
  return rows


def run(quick: bool = True, log=print) -> dict[str, Any]:
  budget = 3.0 if quick else 6.0
  t0 = time.perf_counter()
  out = {"suite": "kernels", "quick": quick,
         "regret": regret_part(quick, budget, log),
         "pseudo": pseudo_part(quick, budget, log)}
  out["subset"] = subset_part(out["regret"], log)
  out["regret_summary"] = {}
  for key in ("regret", "choice_regret"):
    vals = [r[key] for r in out["regret"] if r.get(key)]
    if vals:
      out["regret_summary"][key] = {
          "geomean": math.exp(sum(map(math.log, vals)) / len(vals)),
          "worst": max(vals), "cases": len(vals)}
  out["suite_wall_s"] = time.perf_counter() - t0
  return out


# Report -------------------------------------------------------------------------

def _ms(t: float | None) -> str:
  return "n/a" if t is None else f"{t * 1e3:.3g} ms"


def _x(v: float | None) -> str:
  return "n/a" if v is None else f"{v:.3g}"


def markdown(res: dict[str, Any]) -> str:
  lines = ["# Kernel options: measured costs", "",
           f"Machine: {res.get('machine', {}).get('cpu', '?')}, "
           f"{res.get('machine', {}).get('cpu_count', '?')} cores "
           f"({res.get('machine', {}).get('backend', '?')}); "
           f"{'quick' if res['quick'] else 'full'} mode; "
           f"{res.get('date_utc', '?')} UTC. Medians of interleaved calls.",
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


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.kernels",
                              description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--tag")
  args = p.parse_args(argv)
  os.environ.setdefault("AUTONTK_CACHE_DIR",
                        tempfile.mkdtemp(prefix="autontk-bench-"))
  os.environ.setdefault("AUTONTK_JAX_CACHE", "0")
  res = run(args.quick, log=lambda *a: print(*a, flush=True))
  print(record("kernels", res, markdown, args.tag))
  return 0


def record(name: str, res: dict[str, Any], render, tag: str | None) -> str:
  """Writes ``<name>.json`` and ``<name>.md`` (``render(res)``) under
  ``bench/results/<tag>`` (default ``kernels-<backend>[-<n>core]``), with
  the machine and date; returns the markdown."""
  from bench.__main__ import machine_info
  info = machine_info()
  tag = tag or (f"kernels-{info['backend']}-{info['cpu_count']}core"
                if info["backend"] == "cpu" else f"kernels-{info['backend']}")
  out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "results", tag)
  os.makedirs(out_dir, exist_ok=True)
  res.update(machine=info,
             date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
  with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
    json.dump(res, fh, indent=1, default=str)
  text = render(res)
  with open(os.path.join(out_dir, f"{name}.md"), "w") as fh:
    fh.write(text)
  return text


if __name__ == "__main__":
  sys.exit(main())
