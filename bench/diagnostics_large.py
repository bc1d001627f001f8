"""Kernel diagnostics past the dense kernel's reach: a CNN at N = 20,000.

The CNN and digit images of ``predict_large`` (``O = 10``, the output
traced, so the kernel is ``N × N``: 1.5 GiB in float32 at N = 20,000, over
the 1 GiB budget). Two checkpoints: the initial parameters and the
parameters after a short run of gradient descent on MSE. On the matrix-free
route (forced, with the 1 GiB budget), in a fresh process whose peak RSS
(``ru_maxrss``) is recorded: the condition number, the effective rank
(``tr(Θ)² / ‖Θ‖²_F``), the centered alignment with the one-hot labels, and
the kernel distance between the checkpoints for the whole kernel and per
layer, each with its time and stated error.

  PYTHONPATH=. python -m bench.diagnostics_large --n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import numpy as np

from bench import predict_large

N_LARGE = int(os.environ.get("BENCH_DIAGNOSTICS_LARGE_N", 20_000))
BUDGET = 2**30
"""Bytes a materialised kernel may take (and the peak RSS to stay under)."""
PROBES = int(os.environ.get("BENCH_DIAGNOSTICS_LARGE_PROBES", 10))
"""Hutch++ probes at the large N (each costs one column product; the
library's default is 40, whose accuracy ``diagnostics_accuracy`` records)."""
TRAIN_STEPS, LR = 200, 0.5
BATCH = 64
"""Examples per batch of an operator product (bounds its memory; the
operator's own default sizes batches to half the machine's memory)."""


def checkpoints(x: Any, y: Any) -> tuple[Any, Any, Any]:
  """``(f, params_0, params_1)``: the CNN at initialisation and after
  ``TRAIN_STEPS`` of full-batch gradient descent on MSE (first 2,000
  examples)."""
  import jax
  import jax.numpy as jnp
  f, p0 = predict_large.cnn()
  xs, ys = jnp.asarray(x[:2000]), jnp.asarray(y[:2000])
  loss = lambda p: jnp.mean((f(p, xs) - ys) ** 2)  # noqa: E731
  step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - LR * g, p,
                                        jax.grad(loss)(p)))
  p1 = p0
  for _ in range(TRAIN_STEPS):
    p1 = step(p1)
  return f, p0, p1


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def _row(name: str, est: Any, seconds: float) -> dict[str, Any]:
  return {"quantity": name, "value": float(est.value),
          "error": None if est.exact else float(est.error),
          "exact": bool(est.exact), "route": est.route, "method": est.method,
          "seconds": seconds}


def run(n: int, probes: int = PROBES) -> dict[str, Any]:
  """The diagnostics at ``n`` examples, matrix-free."""
  import jax.numpy as jnp
  import autontk
  from autontk import diagnostics as D
  x, y, _, _ = predict_large.data(n)
  f, p0, p1 = checkpoints(x, y)
  x = jnp.asarray(x)
  opts = {"route": "matrix-free", "memory_budget": BUDGET}
  t0 = time.perf_counter()
  ops = {}
  for name, p in (("a", p1), ("b", p0)):
    ops[name] = {g: autontk.ntk_operator(f, x, p, trace_axes=(-1,), wrt=g,
                                         batch_size=BATCH)
                 for g in (None, "c1", "c2", "w")}
  ka, kb = ops["a"].pop(None), ops["b"].pop(None)
  rows = []
  for name, call in (
      ("condition number", lambda: D.condition_number(ka, **opts)),
      ("effective rank", lambda: D.effective_rank(ka, probes=probes,
                                                  **opts)),
      ("alignment", lambda: D.alignment(ka, y, probes=probes, **opts)),
      ("kernel distance", lambda: D.kernel_distance(ka, kb, probes=probes,
                                                    **opts))):
    est, s = _timed(call)
    rows.append(dict(_row(name, est, s), group=None))
  for g in ops["a"]:
    est, s = _timed(lambda: D.kernel_distance(
        ops["a"][g], ops["b"][g], probes=probes, **opts))
    rows.append(dict(_row("kernel distance", est, s), group=g))
  return {"n": n, "probes": probes, "budget_mib": BUDGET / 2**20,
          "batch": BATCH,
          "rows": rows, "seconds": time.perf_counter() - t0,
          "peak_rss_mib": predict_large._rss_mib()}


def suite_run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  """The suite: the run at the large N (``--quick``: 1,000) in a fresh
  process."""
  n = 1_000 if cfg.quick else N_LARGE
  res = predict_large.fresh(["--n", str(n)], log, cfg.work,
                            module="diagnostics_large")
  log(f"diagnostics at N={n}: {res['seconds']:.0f} s, peak RSS "
      f"{res['peak_rss_mib']:.0f} MiB")
  return res


def markdown(res: dict[str, Any]) -> str:
  """The suite's table."""
  lines = ["| quantity | group | value | ± error | seconds | route, method |",
           "|---|---|---|---|---|---|"]
  for r in res["rows"]:
    err = "exact" if r["exact"] else f"{r['error']:.3g}"
    lines.append(f"| {r['quantity']} | {r['group'] or '(all)'} | "
                 f"{r['value']:.6g} | {err} | {r['seconds']:.1f} | "
                 f"{r['route']}, {r['method']} |")
  n = res["n"]
  return "\n".join(lines + [
      "", f"N = {n}, O = 10 traced: the dense kernel would take "
      f"{n * n * 4 / 2**30:.2f} GiB (budget {res['budget_mib']:.0f} MiB). "
      f"Hutch++ probes: {res['probes']}. All diagnostics in "
      f"{res['seconds'] / 60:.1f} min, peak RSS "
      f"{res['peak_rss_mib']:.0f} MiB. Operators in batches of "
      f"{res.get('batch', BATCH)} examples."] + _unbounded(res))


def _unbounded(res: dict[str, Any]) -> list[str]:
  """A line for each estimate whose error bound is infinite."""
  return ["", *(f"The {r['quantity']}'s error bound is infinite: Lanczos "
                "did not separate the smallest eigenvalue from 0 (its "
                "residual bound reaches it), so only its order of magnitude "
                "is known." for r in res["rows"]
                if r["error"] is not None and r["error"] == float("inf"))]


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=N_LARGE)
  ap.add_argument("--probes", type=int, default=PROBES)
  a = ap.parse_args()
  print(json.dumps(run(a.n, a.probes)))


if __name__ == "__main__":
  main()
