"""Dense or matrix-free: kernel regression and top-k eigenvalues as N grows.

For an MLP, a small CNN and a small attention block (``bench/zoo``), one
output (``O = 1``, traced: an ``N × N`` operator), at growing ``N``:

* **solve**: the kernel-regression weights ``(Θ + λI)⁻¹ y``
  (``λ = 1e-3 · trace/N``): dense = the kernel (``autontk.ntk_fn``, auto)
  + Cholesky solve;
  matrix-free = :func:`autontk.solvers.solve` (Nyström-preconditioned CG,
  ``tol=1e-4``);
* **eigsh**: the top 10 eigenvalues: dense = the kernel + ``eigh``;
  matrix-free = :func:`autontk.solvers.eigsh` (LOBPCG).

Each route is timed end to end (the first call, compile included, then the
best of two more calls; the kernel or operator products are inside the
timing), with the relative difference of the answers. **Memory** is the
estimate of :func:`autontk.route.choose_route`, not a measurement: the
dense route's kernel and factor (``2·N²`` floats) and the matrix-free
route's compiled product programs' peak (XLA's memory analysis) plus its
Krylov vectors. Auto's choice is ``choose_route``'s (given the solve's
shift and tolerance); its regret is the time of the route it picks over
the faster route's. Quick mode runs N = 64 and 512, and N = 2048 for the
MLP (whose dense route stays cheap enough there).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bench.zoo import functions as zoo

K = 10


def models(n: int) -> dict[str, zoo.Model]:
  return {"mlp": zoo.deep_mlp(3, 64, 16, 1, n),
          "cnn": zoo.conv_net((8,), 6, 1, n),
          "attention": zoo.attention_block(4, 16, 1, n)}


def _best(fn: Callable[[], Any]) -> tuple[float, float, Any]:
  """(first call s, best of two more s, value)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  best = np.inf
  for _ in range(2):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def case(model: zoo.Model, n: int, question: str) -> dict[str, Any]:
  """Both routes of ``question`` on ``model`` at ``n`` examples."""
  import autontk
  from autontk import solvers
  from autontk.route import choose_route
  op = autontk.ntk_operator(model.f, model.x1, model.params,
                            trace_axes=model.trace_axes)
  # A kernel function of its own: op.to_dense() keeps its kernel, and the
  # dense route's time must include computing it.
  ntk = autontk.ntk_fn(model.f, trace_axes=model.trace_axes)
  kernel = lambda: ntk(model.x1, None, model.params)
  y = jax.random.normal(jax.random.PRNGKey(1), (n,))
  shift = 1e-3 * float(op.trace()) / n
  if question == "solve":
    def dense():
      k = kernel()
      return jax.scipy.linalg.solve(k + shift * jnp.eye(n), y,
                                    assume_a="pos")
    free = lambda: solvers.solve(op, y, shift=shift, tol=1e-4,
                                 progress=False)
  else:
    dense = lambda: jnp.linalg.eigvalsh(kernel())[::-1][:K]
    free = lambda: solvers.eigsh(op, K)[0]
  rec: dict[str, Any] = {"n": n, "question": question}
  for name, fn in (("dense", dense), ("matrix_free", free)):
    rec[f"{name}_first_s"], rec[f"{name}_s"], rec[name] = _best(fn)
  a, b = np.asarray(rec.pop("matrix_free")), np.asarray(rec.pop("dense"))
  rec["rel_diff"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
  rep = choose_route(op, question, k=K, tol=1e-4, shift=shift)
  rec.update(auto=rep.route, auto_reason=rep.reason,
             dense_bytes=rep.dense_bytes, matrix_free_bytes=rep.matrix_free_bytes,
             predicted_dense_s=rep.dense_seconds,
             predicted_matrix_free_s=rep.matrix_free_seconds)
  faster = min(rec["dense_s"], rec["matrix_free_s"])
  rec["faster"] = "dense" if rec["dense_s"] <= rec["matrix_free_s"] else \
      "matrix_free"
  rec["regret"] = rec[f"{rep.route}_s"] / faster
  return rec


def run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  """The suite: every model, N and question."""
  sizes = (64, 512) if cfg.quick else (256, 1024, 4096)
  res: dict[str, Any] = {"sizes": list(sizes), "k": K, "records": []}
  for name in ("mlp", "cnn", "attention"):
    if not cfg.selected(name):
      continue
    # Quick mode adds one larger N where it is cheap (the MLP's dense
    # route is seconds at 2048), so a crossover shows past the small sizes.
    more = (2048,) if cfg.quick and name == "mlp" else ()
    for n in sizes + more:
      model = models(n)[name]
      for q in ("solve", "eigsh"):
        rec = case(model, n, q)
        rec["model"] = name
        res["records"].append(rec)
        log(f"{name} N={n} {q}: dense {rec['dense_s']:.3g} s, matrix-free "
            f"{rec['matrix_free_s']:.3g} s, auto {rec['auto']} "
            f"(regret {rec['regret']:.2f})")
        cfg.save_partial(res)
  return res


def crossover(recs: list[dict[str, Any]]) -> int | None:
  """The smallest N from which matrix-free is faster at every larger N."""
  best = None
  for r in sorted(recs, key=lambda r: -r["n"]):
    if r["faster"] != "matrix_free":
      break
    best = r["n"]
  return best


def markdown(res: dict[str, Any]) -> str:
  rows = ["Timings were taken on a machine shared with other jobs (the "
          "load varied during the run): compare the two routes of one row, "
          "timed one after the other, rather than rows with each other.", "",
          "| model | question | N | dense s | matrix-free s | priced dense s "
          "| priced matrix-free s | rel. diff | dense MiB (est.) | "
          "matrix-free MiB (est.) | auto | regret |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in res["records"]:
    mark = lambda k: f"**{r[k]:.3g}**" if r["faster"] in k else f"{r[k]:.3g}"
    rows.append(
        f"| {r['model']} | {r['question']} | {r['n']} | {mark('dense_s')} | "
        f"{mark('matrix_free_s')} | {r['predicted_dense_s']:.3g} | "
        f"{r['predicted_matrix_free_s']:.3g} | {r['rel_diff']:.1e} | "
        f"{r['dense_bytes'] / 2**20:.3g} | "
        f"{r['matrix_free_bytes'] / 2**20:.3g} | {r['auto']} | "
        f"{r['regret']:.2f} |")
  lines = ["", "Crossover (matrix-free faster from this N on, within the "
           "sizes run):", ""]
  groups: dict[tuple[str, str], list] = {}
  for r in res["records"]:
    groups.setdefault((r["model"], r["question"]), []).append(r)
  for (m, q), recs in groups.items():
    c = crossover(recs)
    lines.append(f"* {m} {q}: " + (f"N = {c}" if c else "none (dense "
                                   "faster at the largest N)"))
  regrets = [r["regret"] for r in res["records"]]
  if regrets:
    lines += ["", f"Auto's regret: geomean "
              f"{float(np.exp(np.mean(np.log(regrets)))):.2f}, worst "
              f"{max(regrets):.2f} over {len(regrets)} cases."]
  return "\n".join(rows + lines)


def figures(out_dir: str, res: dict[str, Any]) -> str:
  """``predict_routes.png``: seconds of both routes against N."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return ""
  import os
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, q in zip(axes, ("solve", "eigsh")):
    for m, c in zip(("mlp", "cnn", "attention"), ("C0", "C1", "C2")):
      recs = [r for r in res["records"] if r["model"] == m
              and r["question"] == q]
      if not recs:
        continue
      n = [r["n"] for r in recs]
      ax.plot(n, [r["dense_s"] for r in recs], c + "-o", label=f"{m} dense")
      ax.plot(n, [r["matrix_free_s"] for r in recs], c + "--s",
              label=f"{m} matrix-free")
      for r in recs:
        ax.plot(r["n"], r[f"{r['auto']}_s"], "k*", ms=9)
    ax.set(xscale="log", yscale="log", xlabel="N", ylabel="seconds",
           title=f"{q} (★ = auto's choice)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "predict_routes.png"), dpi=110)
  return "![dense vs matrix-free](predict_routes.png)"
