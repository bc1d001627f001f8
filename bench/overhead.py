"""Per-call overhead of the functions autontk returns, against ``jax.jit``.

For each case, the function ``ntk_fn`` returns (an explicit method and
``"auto"``) is called the way users call it, ``ntk(x1, x2, params,
**kwargs)``, and compared with ``jax.jit`` of the very same computation:
``jax.jit(lambda x1, x2, p, kw: ntk(x1, x2, p, **kw, train=True))``, whose
arguments are the arrays (array kwargs included) and which closes over the
Python constants. Both are warm; they are timed in interleaved rounds of
many calls each (so machine noise hits both alike), and the overhead is the
median over rounds of the per-call difference within a round.
``ntk_vp_fn``'s product is compared with ``jax.jit`` of the same product
the same way. Target (docs/performance.md): at most 20 µs of overhead, and
products within 1.1× of the jitted function.

Run: ``python -m bench.overhead [--tag TAG] [--rounds 61]``; writes
``bench/results/<tag>/overhead.json`` and ``overhead.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def _mlp():
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  p = {"w1": jax.random.normal(k[0], (16, 64)) / 4,
       "w2": jax.random.normal(k[1], (64, 4)) / 8}
  x = jax.random.normal(k[2], (8, 16))
  return "mlp_16_64_4_n8", lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p, \
      x, None, {}, dict(trace_axes=(), vmap_axes=0)


def _attention():
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  d = 16
  p = {n: jax.random.normal(kk, (d, d)) / 4 for n, kk in zip("qkv", k[:3])}
  x = jax.random.normal(k[3], (4, 6, d))

  def f(p, x):
    q, kk, v = x @ p["q"], x @ p["k"], x @ p["v"]
    a = jax.nn.softmax(q @ jnp.swapaxes(kk, -1, -2) / d ** 0.5, axis=-1)
    return jnp.mean(a @ v, axis=-2)

  return "attention_d16_n4", f, p, x, None, {}, dict(vmap_axes=0)


def _pytree_kwargs():
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  p = {"a": jax.random.normal(k[0], (8, 32)) / 3,
       "b": jax.random.normal(k[1], (8, 32)) / 3,
       "out": jax.random.normal(k[2], (32, 3)) / 6}
  x = {"u": jnp.ones((6, 8)), "v": jnp.ones((6, 8)) * 0.5}

  def f(p, x, scale, train=True):
    h = jnp.tanh(x["u"] @ p["a"] + x["v"] @ p["b"]) * scale
    return h @ p["out"] if train else h[:, :3]

  kwargs = {"scale": jnp.float32(0.7), "train": True}
  return "pytree_inputs_and_kwargs", f, p, x, None, kwargs, {}


def _rnn():
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  h = 32
  p = {"w": jax.random.normal(k[0], (h, h)) / h ** 0.5,
       "u": jax.random.normal(k[1], (4, h)) / 2,
       "o": jax.random.normal(k[2], (h, 2)) / h ** 0.5}
  x = jnp.ones((4, 10, 4))

  def f(p, x):
    def step(s, xt):
      s = jnp.tanh(s @ p["w"] + xt @ p["u"])
      return s, None
    s, _ = jax.lax.scan(step, jnp.zeros((x.shape[0], h)),
                        jnp.swapaxes(x, 0, 1))
    return s @ p["o"]

  return "rnn_scan_10", f, p, x, None, {}, dict(trace_axes=(), vmap_axes=0)


CASES = (_mlp, _attention, _pytree_kwargs, _rnn)


def _per_call(fn: Callable[[], Any], calls: int) -> float:
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / calls


def compare(direct: Callable[[], Any], jitted: Callable[[], Any],
            rounds: int) -> dict[str, float]:
  """Per-call seconds of both, over interleaved rounds.

  The overhead is the median of the *paired* differences (each round times
  both functions back to back, in alternating order), so that slow drifts
  of a shared machine cancel within a pair instead of adding to one side;
  the ratio is the median of the paired ratios.
  """
  one = _per_call(jitted, 3)
  calls = max(20, min(2000, int(0.02 / max(one, 1e-7))))
  times: dict[str, list[float]] = {"direct": [], "jit": []}
  for r in range(rounds):
    order = (("direct", direct), ("jit", jitted))
    for name, fn in order if r % 2 == 0 else order[::-1]:
      times[name].append(_per_call(fn, calls))
  diffs = [d - j for d, j in zip(times["direct"], times["jit"])]
  q1, _, q3 = statistics.quantiles(diffs, n=4)
  return {"direct_s": statistics.median(times["direct"]),
          "jit_s": statistics.median(times["jit"]),
          "overhead_s": statistics.median(diffs),
          "overhead_q1_s": q1, "overhead_q3_s": q3,
          "ratio": statistics.median(
              d / j for d, j in zip(times["direct"], times["jit"])),
          "calls_per_round": calls}


def run_case(make, rounds: int) -> list[dict[str, Any]]:
  import autontk
  name, f, p, x1, x2, kwargs, options = make()
  rows = []
  # Array kwargs are arguments of the jitted functions too (closed over,
  # XLA would fold them in as constants: another computation); Python
  # constants (``train=True``) are closed over, as users write it.
  arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
  static = {k: v for k, v in kwargs.items() if k not in arrays}
  for impl in ("structured_derivatives", "jacobian_contraction", "auto"):
    ntk = autontk.ntk_fn(f, implementation=impl, **options)
    jitted = jax.jit(lambda a, b, q, kw: ntk(a, b, q, **kw, **static))
    r = compare(lambda: ntk(x1, x2, p, **kwargs),
                lambda: jitted(x1, x2, p, arrays), rounds)
    rows.append({"case": name, "function": f"ntk_fn({impl})", **r})
  vp = autontk.ntk_vp_fn(f, x1, x2, p, **kwargs)
  cot = jax.tree.map(jnp.ones_like, jax.eval_shape(
      lambda: f(p, x1 if x2 is None else x2, **kwargs)))
  vp_jit = jax.jit(lambda a, b, q, kw, c: autontk.ntk_vp_fn(
      f, a, b, q, **kw, **static)(c))
  r = compare(lambda: vp(cot), lambda: vp_jit(x1, x2, p, arrays, cot),
              rounds)
  rows.append({"case": name, "function": "ntk_vp_fn product", **r})
  return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
  out = ["# Per-call overhead against jax.jit", "",
         f"{info['device']}; load average before the run "
         f"{info['load_before']}; after {info['load_after']}; "
         f"{info['rounds']} interleaved rounds per row.", "",
         "| case | function | direct µs | jax.jit µs | overhead µs "
         "| overhead quartiles µs | ratio |",
         "|---|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['case']} | {r['function']} | {r['direct_s'] * 1e6:.1f}"
               f" | {r['jit_s'] * 1e6:.1f} | {r['overhead_s'] * 1e6:.1f} | "
               f"{r['overhead_q1_s'] * 1e6:.1f} – "
               f"{r['overhead_q3_s'] * 1e6:.1f} | {r['ratio']:.3f} |")
  worst = max(r["overhead_s"] for r in rows if r["function"] != (
      "ntk_vp_fn product"))
  vp = max(r["ratio"] for r in rows if r["function"] == "ntk_vp_fn product")
  out += ["", f"Worst overhead of `ntk_fn`'s functions: {worst * 1e6:.1f} µs "
          f"(target ≤ 20 µs). Worst `ntk_vp_fn` product ratio: {vp:.3f} "
          "(target ≤ 1.1)."]
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.overhead",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--tag", default=f"cpu-{os.cpu_count()}core")
  parser.add_argument("--rounds", type=int, default=61)
  args = parser.parse_args(argv)
  os.environ.setdefault("AUTONTK_CACHE_DIR",
                        tempfile.mkdtemp(prefix="autontk-overhead-"))
  info = {"device": jax.devices()[0].device_kind, "rounds": args.rounds,
          "load_before": os.getloadavg()[0]}
  rows = [r for make in CASES for r in run_case(make, args.rounds)]
  info["load_after"] = os.getloadavg()[0]
  folder = pathlib.Path(__file__).parent / "results" / args.tag
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "overhead.json").write_text(json.dumps(
      {"info": info, "rows": rows}, indent=1))
  text = markdown(rows, info)
  (folder / "overhead.md").write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
