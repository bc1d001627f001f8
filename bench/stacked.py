"""Stacked layers: the same network with its layers' weights held as separate
leaves, as one stacked leaf indexed in a Python loop (``p["w"][i]``), as one
stacked leaf applied with ``lax.scan`` over layers, and (MLP) with
``fori_loop`` over a layer index. Every method and ``auto``.

Timed the way a user calls the library: ``ntk = autontk.ntk_fn(f,
trace_axes=(), vmap_axes=0, implementation=m)``, then ``ntk(x1, None,
params)`` called directly (no extra ``jit``), warm, ``block_until_ready``.
After each function's first call, all functions of a model are called
round-robin (interleaved) and the median per function is reported, so a busy
moment of a shared machine hits all of them alike. ``auto`` is timed the
same way (its plan is made by the first call, reported separately).

Run alone with ``python -m bench.stacked [--quick] [--tag TAG]`` (also
``--only stacked`` of ``python -m bench``). The result is
``bench/results/<tag>/stacked.json`` and the table of :func:`stacked_md`.
Only autontk's public API is used, so the same file times an older
checkout of the library (``PYTHONPATH=<checkout>:.``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

METHODS = ("jacobian_contraction", "ntk_vector_products",
           "structured_derivatives", "auto")
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD", "auto": "auto"}
VARIANTS = ("separate", "indexed", "scan", "fori")


def _normal(key, shape, scale):
  return scale * jax.random.normal(key, shape, jnp.float32)


def _variants(layer: Callable, stack: dict[str, jax.Array], head: Callable,
              tail: Callable, fori: bool) -> dict[str, tuple]:
  """The four ways of holding ``stack`` (``{name: (L, ...)}``).

  ``layer(h, w)`` applies one layer with ``w = {name: array}``; ``head`` and
  ``tail`` map the input and the last hidden state with the rest of the
  parameters (``p["rest"]``).
  """
  n = next(iter(stack.values())).shape[0]

  def separate(p, x):
    h = head(p["rest"], x)
    for i in range(n):
      h = layer(h, p[f"layer{i}"])
    return tail(p["rest"], h)

  def indexed(p, x):
    h = head(p["rest"], x)
    for i in range(n):
      h = layer(h, {k: v[i] for k, v in p["stack"].items()})
    return tail(p["rest"], h)

  def scanned(p, x):
    h, _ = lax.scan(lambda h, w: (layer(h, w), None),
                    head(p["rest"], x), p["stack"])
    return tail(p["rest"], h)

  def fori_loop(p, x):
    h = lax.fori_loop(0, n, lambda i, h: layer(
        h, {k: v[i] for k, v in p["stack"].items()}), head(p["rest"], x))
    return tail(p["rest"], h)

  return {"separate": separate, "indexed": indexed, "scan": scanned,
          **({"fori": fori_loop} if fori else {})}


def _params(variant: str, rest: dict, stack: dict) -> dict:
  if variant == "separate":
    n = next(iter(stack.values())).shape[0]
    return {"rest": rest, **{f"layer{i}": {k: v[i] for k, v in stack.items()}
                             for i in range(n)}}
  return {"rest": rest, "stack": stack}


def mlp(quick: bool) -> dict[str, Any]:
  """The issue's MLP: 64 -> 256 x4 -> 10 (tanh), N = 16, full O x O."""
  d, w, o, n_layers, n = 64, 256, 10, 4, 16
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  rest = {"in": _normal(ks[0], (d, w), d ** -0.5),
          "out": _normal(ks[1], (w, o), w ** -0.5)}
  stack = {"w": _normal(ks[2], (n_layers, w, w), w ** -0.5)}
  fns = _variants(lambda h, p: jnp.tanh(h @ p["w"]), stack,
                  lambda r, x: jnp.tanh(x @ r["in"]),
                  lambda r, h: h @ r["out"], fori=True)
  return {"name": "mlp", "note": "64-256x4-10 tanh, N=16, full OxO",
          "fns": fns, "rest": rest, "stack": stack,
          "x": _normal(ks[3], (n, d), 1.0)}


def _conv(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cnn(quick: bool) -> dict[str, Any]:
  """Conv 3x3 3->16, then four stacked conv 3x3 16->16 (relu), global
  average pool, dense 16 -> 10; 8x8x3 images, N = 8, full O x O."""
  c, n_layers, n, o = 16, 4, 8, 10
  ks = jax.random.split(jax.random.PRNGKey(1), 5)
  rest = {"in": _normal(ks[0], (3, 3, 3, c), (27) ** -0.5),
          "out": _normal(ks[1], (c, o), c ** -0.5)}
  stack = {"k": _normal(ks[2], (n_layers, 3, 3, c, c), (9 * c) ** -0.5),
           "b": _normal(ks[3], (n_layers, c), 0.1)}
  fns = _variants(lambda h, p: jax.nn.relu(_conv(h, p["k"]) + p["b"]), stack,
                  lambda r, x: jax.nn.relu(_conv(x, r["in"])),
                  lambda r, h: h.mean((-3, -2)) @ r["out"], fori=False)
  return {"name": "cnn", "note": "conv3x3 16ch x4 stacked, 8x8x3, N=8, "
          "full OxO", "fns": fns, "rest": rest, "stack": stack,
          "x": _normal(ks[4], (n, 8, 8, 3), 1.0)}


def _layer_norm(h, scale):
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  return (h - mu) * lax.rsqrt(var + 1e-5) * scale


def _block(h, p):
  a = _layer_norm(h, p["ln1"])
  q, k, v = a @ p["q"], a @ p["k"], a @ p["v"]
  att = jax.nn.softmax(jnp.einsum("...td,...sd->...ts", q, k) /
                       q.shape[-1] ** 0.5, axis=-1)
  h = h + jnp.einsum("...ts,...sd->...td", att, v) @ p["o"]
  return h + jax.nn.gelu(_layer_norm(h, p["ln2"]) @ p["w1"]) @ p["w2"]


def transformer(quick: bool) -> dict[str, Any]:
  """Four pre-LN transformer blocks (one head, d = 32, MLP 64), 8 tokens of
  16 features, mean over tokens, dense 32 -> 10; N = 8, full O x O."""
  d, t, f, n_layers, n, o = 32, 8, 16, 4, 8, 10
  ks = jax.random.split(jax.random.PRNGKey(2), 12)
  rest = {"emb": _normal(ks[0], (f, d), f ** -0.5),
          "out": _normal(ks[1], (d, o), d ** -0.5)}
  stack = {name: _normal(k, (n_layers, a, b), a ** -0.5)
           for name, k, a, b in (("q", ks[2], d, d), ("k", ks[3], d, d),
                                 ("v", ks[4], d, d), ("o", ks[5], d, d),
                                 ("w1", ks[6], d, 2 * d),
                                 ("w2", ks[7], 2 * d, d))}
  stack["ln1"] = 1.0 + _normal(ks[8], (n_layers, d), 0.1)
  stack["ln2"] = 1.0 + _normal(ks[9], (n_layers, d), 0.1)
  fns = _variants(_block, stack, lambda r, x: x @ r["emb"],
                  lambda r, h: h.mean(-2) @ r["out"], fori=False)
  return {"name": "transformer", "note": "4 blocks d=32 T=8, N=8, full OxO",
          "fns": fns, "rest": rest, "stack": stack,
          "x": _normal(ks[10], (n, t, f), 1.0)}


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer}


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


def _interleaved(calls: dict, budget_s: float, min_rounds: int,
                 max_call_s: float) -> dict[Any, list[float]]:
  """Round-robin timings of the warm calls. After two rounds a call over
  ``max_call_s`` or over 10x the fastest one is settled (a second-long call
  run between millisecond ones disturbs them: caches, allocator), and the
  rounds go on with the close ones."""
  times = {key: [] for key in calls}
  t_end = time.perf_counter() + budget_s
  rounds = 0
  while rounds < min_rounds or time.perf_counter() < t_end:
    fastest = min((statistics.median(ts) for ts in times.values() if ts),
                  default=0.0)
    for key, call in calls.items():
      if rounds >= 2 and times[key] and statistics.median(
          times[key]) > min(max_call_s, 10 * fastest):
        continue  # enough of a slow call
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[key].append(time.perf_counter() - t0)
    rounds += 1
    if rounds >= 200:
      break
  return times


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
  import autontk
  x = model["x"]
  fns, records, ref = {}, [], None
  for variant, f in model["fns"].items():
    params = _params(variant, model["rest"], model["stack"])
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
  times = _interleaved(fns, budget_s=4.0 if quick else 15.0,
                       min_rounds=5 if quick else 9, max_call_s=0.5)
  for rec in records:
    ts = times.get((rec["variant"], rec["method"]))
    if ts:
      rec.update(median_s=statistics.median(ts), min_s=min(ts),
                 repeats=len(ts))
      log(f"  {rec['variant']:9s} {SHORT[rec['method']]:5s} "
          f"{1e3 * rec['median_s']:9.2f} ms  err {rec['rel_err']:.1e}"
          + (f"  pick {rec.get('auto_pick')}" if rec["method"] == "auto"
             else ""))
  return {"name": model["name"], "note": model["note"], "records": records}


def run(cfg=None, log=print, models=None, quick: bool = True
        ) -> dict[str, Any]:
  """The suite (``cfg``: a ``bench.suites.RunConfig``, or ``None``)."""
  quick = quick if cfg is None else cfg.quick
  names = models or list(MODELS)
  out = {"suite": "stacked", "cases": []}
  for name in names:
    log(f"stacked: {name}")
    out["cases"].append(run_model(MODELS[name](quick), quick, log))
    if cfg is not None and cfg.checkpoint is not None:
      cfg.checkpoint(dict(out))
  return out


def stacked_md(res: dict[str, Any]) -> str:
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
    for variant in VARIANTS:
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


def compare_md(before: dict, after: dict) -> str:
  """Before / after: every method per model and variant, SD against the
  same model with separate leaves, and auto's regret."""
  b, a = _medians(before), _medians(after)
  lines = ["| model | held as | JC | NTVP | SD before | SD after | "
           "SD / separate, before | after | after (min times) | "
           "SD GFLOP before | after | auto pick, before | after | "
           "auto regret, after |", "|---" * 14 + "|"]
  regrets = {(m, v): x for m, v, x in regret(after)}
  for case in after["cases"]:
    name = case["name"]
    for variant in VARIANTS:
      key = (name, variant, "structured_derivatives")
      if key not in a:
        continue
      sep_b = b.get((name, "separate", "structured_derivatives"), {})
      sep_a = a[(name, "separate", "structured_derivatives")]
      ms = lambda d, k: (f"{1e3 * d[k]['median_s']:.1f}" if k in d  # noqa: E731
                         else "n/a")
      ratio_b = (f"{b[key]['median_s'] / sep_b['median_s']:.0f}x"
                 if key in b and sep_b else "n/a")
      gflop = lambda d, k: (f"{d[k]['flops'] / 1e9:.3f}"  # noqa: E731
                            if "flops" in d.get(k, {}) else "n/a")
      pick = lambda d: SHORT.get(d.get((name, variant, "auto"), {}).get(  # noqa: E731
          "auto_pick") or "", "n/a")
      lines.append(
          f"| {name} | {variant} | {ms(a, (name, variant, METHODS[0]))} | "
          f"{ms(a, (name, variant, METHODS[1]))} | {ms(b, key)} | "
          f"{ms(a, key)} | {ratio_b} | "
          f"{a[key]['median_s'] / sep_a['median_s']:.2f}x | "
          f"{a[key]['min_s'] / sep_a['min_s']:.2f}x | {gflop(b, key)} | "
          f"{gflop(a, key)} | {pick(b)} | "
          f"{pick(a)} | {regrets.get((name, variant), float('nan')):.2f} |")
  values = [x for _, _, x in regret(after)]
  if values:
    geo = float(np.exp(np.mean(np.log(values))))
    lines += ["", f"auto regret after (auto / fastest explicit method), "
              f"geomean {geo:.2f}, worst {max(values):.2f} over "
              f"{len(values)} model variants."]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.stacked")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--tag", default="cpu-2core")
  p.add_argument("--models", nargs="+", choices=list(MODELS))
  p.add_argument("--out", default=None, help="JSON path (default: results)")
  p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                 help="print the before/after table of two saved runs")
  args = p.parse_args(argv)
  if args.compare:
    with open(args.compare[0]) as fb, open(args.compare[1]) as fa:
      print(compare_md(json.load(fb), json.load(fa)))
    return 0
  res = run(models=args.models, quick=args.quick)
  res.update(quick=args.quick, jax=jax.__version__,
             date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
  path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "results", args.tag, "stacked.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as fh:
    json.dump(res, fh, indent=1, default=str)
  print(stacked_md(res))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
