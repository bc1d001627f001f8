"""Kernel regression past the dense kernel's reach: a CNN's GP mean, N ≥ 50,000.

A small CNN on 8×8 digit images (scikit-learn's digits, shifted by up to a
pixel and noised to make ``N`` training examples; the test set is real
digits held out of the sources), ``O = 10`` one-hot targets,
``trace_axes=(-1,)``: the operator is ``N × N`` acting on 10 columns, and
the dense kernel (``N² · 4`` bytes, 10 GB at N = 50,000) does not fit the
2 GiB budget. The GP mean ``Θ(x*, x) (Θ + λI)⁻¹ y`` is computed matrix-free
(:func:`autontk.solvers.solve`, Nyström-preconditioned CG, on
:func:`autontk.ntk_operator`, then one product of the cross operator) in a fresh process whose peak RSS
(``ru_maxrss``) is the memory recorded. Accuracy: the same procedure on a
subset that fits, matrix-free against the dense kernel.

  PYTHONPATH=. python -m bench.predict_large --probe 50000   # one product
  PYTHONPATH=. python -m bench.predict_large --run 50000     # one solve
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

BUDGET = 2 * 2**30
"""The memory budget, bytes (peak RSS of the process)."""
N_TEST = 500
DIAG_REG = 1e-1
"""Ridge, relative to trace(Θ)/N (neural-tangents' ``diag_reg``). At 1e-2
the float32 solve at N = 50,000 had not reached its tolerance after 168
CG iterations (44 min) and was stopped; a 10× larger ridge divides the
condition number CG faces by about 10."""
CHECKPOINT = os.environ.get("BENCH_PREDICT_LARGE_CHECKPOINT")
"""A directory: the large solve saves its iterate there every
:data:`SEGMENT` iterations and a rerun resumes from it."""
SEGMENT = 100
TOL, RANK = 1e-3, "auto"
"""CG tolerance (relative residual) and Nyström rank (the solver's
automatic sketch: 50 columns, grown 4× while it saves more column products
than it costs, up to 800)."""
MAXITER = int(os.environ.get("BENCH_PREDICT_LARGE_MAXITER", 400))
"""CG iterations at most at the large N (each is a 10-column product)."""
SUBSET_TOL, SUBSET_MAXITER = 1e-9, 400
"""The subset's solve runs in float64 to convergence: it checks the
solver against the dense solve where precision does not limit either."""
SUBSET = int(os.environ.get("BENCH_PREDICT_LARGE_SUBSET", 512))
"""N of the subset solved both ways (full mode)."""
SUBSET_TIMEOUT = float(os.environ.get("BENCH_PREDICT_LARGE_TIMEOUT", 3600))
"""Seconds the subset's matrix-free solve may take."""
BATCH = 128
"""Examples per batch of a product (its program is a few MiB)."""


def data(n: int, seed: int = 0):
  """``x (n, 8, 8, 1)``, one-hot ``y (n, 10)``, and a real test set."""
  from sklearn.datasets import load_digits
  d = load_digits()
  img = (d.images / 16.0).astype(np.float32)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(img))
  test, src = order[:N_TEST], order[N_TEST:]
  pick = src[rng.integers(0, len(src), n)]
  x = np.zeros((n, 10, 10), np.float32)
  dx, dy = rng.integers(0, 3, n), rng.integers(0, 3, n)
  for sx in range(3):
    for sy in range(3):
      m = (dx == sx) & (dy == sy)
      x[m, sx:sx + 8, sy:sy + 8] = img[pick[m]]
  x = x[:, 1:9, 1:9] + 0.05 * rng.standard_normal((n, 8, 8)).astype(np.float32)
  eye = np.eye(10, dtype=np.float32)
  return (x[..., None], eye[d.target[pick]], img[test][..., None],
          d.target[test])


def cnn():
  """``(f, params)``: conv 3×3 (8) - relu - conv 3×3 (8) - relu - dense 10."""
  import jax
  import jax.numpy as jnp

  def conv(w, x):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def f(p, x):
    h = jax.nn.relu(conv(p["c1"], x))
    h = jax.nn.relu(conv(p["c2"], h))
    return h.reshape(h.shape[0], -1) @ p["w"] / jnp.sqrt(h[0].size)

  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"c1": jax.random.normal(k1, (3, 3, 1, 8)) / 3.0,
            "c2": jax.random.normal(k2, (3, 3, 8, 8)) / np.sqrt(72.0),
            "w": jax.random.normal(k3, (512, 10))}
  return f, params


def _operator(n: int, seed: int = 0):
  import jax
  import jax.numpy as jnp
  import autontk
  x, y, xt, lt = data(n, seed)
  f, params = cnn()
  dt = jax.tree.leaves(params)[0].dtype  # float64 under --x64
  x, y, xt = (jnp.asarray(a, dt) for a in (x, y, xt))
  op = autontk.ntk_operator(f, x, params, trace_axes=(-1,),
                            batch_size=BATCH)
  return f, params, op, y, xt, lt


def probe(n: int) -> dict[str, Any]:
  """Seconds of one product with one column at ``n`` (compiled first)."""
  import jax
  import jax.numpy as jnp
  _, _, op, y, _, _ = _operator(n)
  out = {"n": n, "batch_size": op.batch_size}
  v = jnp.ones((n, 1), op.dtype)
  t0 = time.perf_counter()
  fn = jax.jit(op.matmat).lower(v).compile()
  out["compile_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  fn(v).block_until_ready()
  out["product_s"] = time.perf_counter() - t0
  out["peak_rss_mib"] = _rss_mib()
  return out


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(n: int, dense: bool = False, tol: float = TOL,
        maxiter: int = MAXITER) -> dict[str, Any]:
  """The GP mean on the test set, matrix-free (or dense): time, CG
  iterations and residual, peak RSS, test accuracy, the mean itself."""
  import jax
  import jax.numpy as jnp
  from autontk import solvers
  from autontk.solvers import preconditioners
  t0 = time.perf_counter()
  f, params, op, y, xt, lt = _operator(n)
  shift = DIAG_REG * float(op.trace()) / n
  if dense:
    k = op.to_dense()
    alpha = jax.scipy.linalg.solve(k + shift * jnp.eye(n), y, assume_a="pos")
    info = None
  else:
    t1 = time.perf_counter()
    precond = preconditioners.make(op, "nystrom", RANK, shift, 0,
                                   y.shape[1], tol)
    apply, parts = precond
    sketch = {"rank": preconditioners.sketch_rank(precond),
              "sketch_s": time.perf_counter() - t1}
    alpha, info = solvers.solve(
        op, y, shift=shift, tol=tol, maxiter=maxiter, progress=True,
        preconditioner=lambda v: apply(parts, v), return_info=True,
        checkpoint=CHECKPOINT if n > SUBSET else None, segment=SEGMENT)
  mean = np.asarray(op.cross(xt).matmat(alpha))
  out = {"n": n, "route": "dense" if dense else "matrix_free",
         "seconds": time.perf_counter() - t0, "shift": shift,
         "dtype": str(op.dtype),
         "batch_size": op.batch_size, "peak_rss_mib": _rss_mib(),
         "accuracy": float(np.mean(mean.argmax(-1) == lt)),
         "mean": mean.tolist()}
  if info is not None:
    out.update(sketch, iterations=int(np.max(np.asarray(info.iterations))),
               residual=float(np.max(np.asarray(info.residual))))
  return out


def suite_run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  """The suite: a one-column product and a whole solve at the large N
  (float32), and the solve on a subset matrix-free and dense (float64)."""
  n_large, n_sub = (50_000, SUBSET) if not cfg.quick else (2_000, 128)
  res: dict[str, Any] = {"budget_mib": BUDGET / 2**20, "n_test": N_TEST,
                         "diag_reg": DIAG_REG, "tol": TOL, "rank": RANK,
                         "maxiter": MAXITER, "subset_tol": SUBSET_TOL}
  res["probe"] = fresh(["--probe", str(n_large)], log, cfg.work)
  log(f"one product at N={n_large}: {res['probe']['product_s']:.1f} s")
  os.environ.setdefault("BENCH_PREDICT_LARGE_CHECKPOINT", os.path.join(
      cfg.work, "predict_large", f"cg_{n_large}"))
  res["large"] = fresh(["--run", str(n_large)], log, cfg.work)
  res["large"].pop("mean")
  log(f"solve at N={n_large}: {res['large']['seconds']:.0f} s")
  sub = ["--run", str(n_sub), "--x64"]
  res["subset_dense"] = fresh(sub + ["--dense"], log, cfg.work)
  res["subset_free"] = fresh(sub + ["--tol", str(SUBSET_TOL), "--maxiter",
                                    str(SUBSET_MAXITER)], log, cfg.work,
                             timeout=SUBSET_TIMEOUT)
  a, b = (np.asarray(res[k].pop("mean")) for k in ("subset_free",
                                                   "subset_dense"))
  res["subset_rel_diff"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
  return res


def markdown(res: dict[str, Any]) -> str:
  """The suite's tables."""
  rows = ["| run | N | dtype | seconds | CG iterations | residual "
          "| peak RSS MiB | test accuracy |", "|---|---|---|---|---|---|---|---|"]
  for k in ("large", "subset_free", "subset_dense"):
    r = res[k]
    rows.append(f"| {r['route']} | {r['n']} | {r['dtype']} | "
                f"{r['seconds']:.1f} | {r.get('iterations', '')} | "
                f"{_g(r.get('residual'))} | {r['peak_rss_mib']:.0f} | "
                f"{r['accuracy']:.3f} |")
  p, big = res["probe"], res["large"]
  return "\n".join(rows + [
      "", f"At N = {big['n']} (float32): CG at most {res['maxiter']} "
      f"iterations, tolerance {res['tol']:g}, Nyström rank {_rank(res)}, "
      f"ridge {res['diag_reg']:g}·trace/N; the GP mean on {res['n_test']} "
      f"test digits in {big['seconds'] / 60:.1f} min at a peak RSS of "
      f"{big['peak_rss_mib']:.0f} MiB (budget {res['budget_mib']:.0f} MiB; "
      f"the dense kernel alone would need "
      f"{big['n'] ** 2 * 4 / 2 ** 30:.1f} GiB). One one-column product: "
      f"{p['product_s']:.1f} s (compile {p['compile_s']:.1f} s).", "",
      f"Subset N = {res['subset_dense']['n']} in float64, CG to tolerance "
      f"{res['subset_tol']:g}: matrix-free against the dense GP mean, "
      f"relative difference {res['subset_rel_diff']:.2e}.", "",
      _verdict(res)] + ([res["note"]] if res.get("note") else []))


def _rank(res: dict[str, Any]) -> str:
  """The sketch's rank: as set, or ``auto`` with the rank it reached and
  the seconds it took."""
  big = res["large"]
  if res["rank"] != "auto" or "rank" not in big:
    return str(res["rank"])
  return (f"auto (grew to {big['rank']} columns in "
          f"{big['sketch_s']:.0f} s)")


def _g(value: float | None) -> str:
  return "" if value is None else f"{value:.2g}"


def _verdict(res: dict[str, Any]) -> str:
  """Whether the large solve reached its tolerance, said plainly."""
  big = res["large"]
  if big.get("residual", 0.0) <= 10 * res["tol"]:
    return (f"The large solve converged: relative residual "
            f"{big['residual']:.2g}.")
  return (f"**The large solve did not converge**: after {big['iterations']} "
          f"CG iterations its relative residual is {big['residual']:.2g} "
          f"(tolerance {res['tol']:g}), so its GP mean is not the kernel "
          "regression's answer (test accuracy "
          f"{big['accuracy']:.3f}); Nyström rank {_rank(res)}. The run "
          "shows the time and memory of the route, not its converged "
          "answer.")


def fresh(args: list[str], log: Callable[..., None] = print,
          work: str | None = None, timeout: float | None = None,
          module: str = "predict_large") -> dict[str, Any]:
  """Runs ``bench.<module>`` (default this one) in a fresh process (its own
  peak RSS); its last line of output is the JSON result. With ``work``,
  the result is kept in ``work/<module>/`` and a later run with the same
  arguments reads it (the suite resumes from its finished pieces)."""
  path = work and os.path.join(work, module,
                               "_".join(a.strip("-") for a in args) + ".json")
  if path and os.path.exists(path):
    log(f"{module} {args}: reusing {path}")
    with open(path) as fh:
      return json.load(fh)
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  try:
    p = subprocess.run([sys.executable, "-m", f"bench.{module}", *args],
                       capture_output=True, text=True, env=env,
                       timeout=timeout)
  except subprocess.TimeoutExpired:
    log(f"{module} {args}: stopped after {timeout:.0f} s")
    return {"timed_out_s": timeout}
  if p.returncode:
    log(p.stderr[-2000:])
    raise RuntimeError(f"{module} {args} failed")
  res = json.loads(p.stdout.strip().splitlines()[-1])
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
      json.dump(res, fh)
  return res


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--probe", type=int)
  ap.add_argument("--run", type=int)
  ap.add_argument("--dense", action="store_true")
  ap.add_argument("--x64", action="store_true")
  ap.add_argument("--tol", type=float, default=TOL)
  ap.add_argument("--maxiter", type=int, default=MAXITER)
  a = ap.parse_args()
  if a.x64:
    import jax
    jax.config.update("jax_enable_x64", True)
  res = probe(a.probe) if a.probe else run(a.run, a.dense, a.tol, a.maxiter)
  print(json.dumps(res))


if __name__ == "__main__":
  main()
