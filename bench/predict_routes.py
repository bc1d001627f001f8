"""Dense or matrix-free: kernel regression, eigenvalues and gradient flow
as N grows.

For an MLP, a small CNN and a small attention block (``bench/zoo``), one
output (``O = 1``, traced: an ``N × N`` operator), at growing ``N``, every
question kind of :func:`autontk.route.choose_route`:

* **solve**, ``R = 1`` and ``R = 8``: the kernel-regression weights
  ``(Θ + λI)⁻¹ Y`` (``λ = 1e-3 · trace/N``): dense = the kernel
  (``autontk.ntk_fn``, auto) + Cholesky solve; matrix-free =
  :func:`autontk.solvers.solve` (Nyström-preconditioned CG, ``tol=1e-4``);
* **eigsh**: the top 10 eigenvalues: dense = the kernel + ``eigvalsh``;
  matrix-free = :func:`autontk.solvers.eigsh` (LOBPCG);
* **times**: gradient flow ``exp(−tΘ/d) y`` at three times (``d`` the
  mean diagonal): dense = the kernel + ``eigh``; matrix-free =
  :func:`autontk.solvers.matfun` (Lanczos).

Each case runs ``autontk tune --routes``' own function
(:func:`autontk.cli.routes.time_routes`): each route is timed end to end
(the first call, compile included, then the best of two more calls; the
kernel or operator products are inside the timing), with the relative
difference of the answers. **Memory** is the
estimate of :func:`autontk.route.choose_route`, not a measurement: the
dense route's kernel and factor (``2·N²`` floats) and the matrix-free
route's compiled product programs' peak (XLA's memory analysis) plus its
Krylov vectors. Auto's choice is ``choose_route``'s (given the solve's
shift and tolerance); its regret is the time of the route it picks over
the faster route's. Quick mode runs N = 64 and 512 (R = 8 and times only
there), and N = 2048 for the MLP (whose dense route stays cheap enough).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from bench import report
from bench.zoo import functions as zoo

K = 10


def models(n: int) -> dict[str, zoo.Model]:
  return {"mlp": zoo.deep_mlp(3, 64, 16, 1, n),
          "cnn": zoo.conv_net((8,), 6, 1, n),
          "attention": zoo.attention_block(4, 16, 1, n)}


QUESTIONS = (("solve", 1), ("eigsh", 1), ("times", 1), ("solve", 8))
"""``(question, R)``: one right-hand side, the top K eigenvalues, gradient
flow at three times, eight right-hand sides."""


def case(model: zoo.Model, n: int, question: str,
         rhs: int = 1) -> dict[str, Any]:
  """Both routes of ``question`` on ``model`` at ``n`` examples, timed and
  priced by ``autontk tune --routes``' own function."""
  from autontk.cli.routes import time_routes
  out = time_routes({"f": model.f, "x1": model.x1, "params": model.params,
                     "kwargs": {}, "trace_axes": model.trace_axes},
                    question, k=K, rhs=rhs, tol=1e-4, ridge=1e-3, repeats=2)
  p, t = out["priced"], out["timed"]
  rec: dict[str, Any] = {"n": n, "question": question, "rhs": rhs}
  for r in ("dense", "matrix_free"):
    rec[f"{r}_first_s"], rec[f"{r}_s"] = t[r]["first_s"], t[r]["best_s"]
    rec[f"{r}_bytes"], rec[f"predicted_{r}_s"] = p[f"{r}_bytes"], p[f"{r}_s"]
  rec.update(rel_diff=out["rel_diff"], auto=out["auto"],
             auto_reason=p["reason"], plan=p["plan"], faster=out["faster"],
             regret=out["regret"])
  return rec


def run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  """The suite: every model, N and question."""
  sizes = (64, 512) if cfg.quick else (256, 1024, 4096)
  res: dict[str, Any] = {"sizes": list(sizes), "k": K, "records": []}
  for name in ("mlp", "cnn", "attention"):
    # Quick mode adds one larger N where it is cheap (the MLP's dense
    # route is seconds at 2048), so a crossover shows past the small sizes.
    more = (2048,) if cfg.quick and name == "mlp" else ()
    for n in sizes + more:
      model = models(n)[name]
      for q, rhs in QUESTIONS:
        extra = (q, rhs) not in (("solve", 1), ("eigsh", 1))
        if (extra and n > 512) or not cfg.selected(
            f"{name} {q} R={rhs} N={n}"):
          continue
        rec = case(model, n, q, rhs)
        rec["model"] = name
        res["records"].append(rec)
        log(f"{name} N={n} {q} R={rhs}: dense {rec['dense_s']:.3g} s, "
            f"matrix-free "
            f"{rec['matrix_free_s']:.3g} s, auto {rec['auto']} "
            f"(regret {rec['regret']:.2f})")
        cfg.save_partial(res)
  return res


def crossover(recs: list[dict[str, Any]]) -> int | None:
  """The smallest N from which matrix-free is faster at every larger N."""
  return report.crossover(recs, lambda r: r["faster"] == "matrix_free")


def markdown(res: dict[str, Any]) -> str:
  rows = ["Each row's two routes were timed one after the other: compare "
          "them within a row rather than rows with each other (on a shared "
          "machine the load may vary during a run). The priced columns are "
          "`choose_route`'s; \"(timed)\" marks a close call (prices within "
          "2×), where it timed one kernel tile and one product of each block "
          "size and decided on those."
          + (f" {res['note']}" if res.get("note") else ""), "",
          "| model | question | R | N | dense s | matrix-free s | priced dense s "
          "| priced matrix-free s | rel. diff | dense MiB (est.) | "
          "matrix-free MiB (est.) | auto | regret |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in res["records"]:
    mark = lambda k: f"**{r[k]:.3g}**" if r["faster"] in k else f"{r[k]:.3g}"
    timed = " (timed)" if "timed" in r.get("auto_reason", "") else ""
    rows.append(
        f"| {r['model']} | {r['question']} | {r.get('rhs', 1)} | {r['n']} | "
        f"{mark('dense_s')} | "
        f"{mark('matrix_free_s')} | {r['predicted_dense_s']:.3g}{timed} | "
        f"{r['predicted_matrix_free_s']:.3g}{timed} | {r['rel_diff']:.1e} | "
        f"{r['dense_bytes'] / 2**20:.3g} | "
        f"{r['matrix_free_bytes'] / 2**20:.3g} | {r['auto']} | "
        f"{r['regret']:.2f} |")
  lines = ["", "Crossover (matrix-free faster from this N on, within the "
           "sizes run):", ""]
  groups: dict[tuple[str, str, int], list] = {}
  for r in res["records"]:
    groups.setdefault((r["model"], r["question"], r.get("rhs", 1)),
                      []).append(r)
  for (m, q, rhs), recs in groups.items():
    c = crossover(recs)
    lines.append(f"* {m} {q} (R = {rhs}): " + (
        f"N = {c}" if c else "none (dense faster at the largest N)"))
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
  fig, axes = plt.subplots(1, len(QUESTIONS), figsize=(5 * len(QUESTIONS),
                                                       4))
  for ax, (q, rhs) in zip(axes, QUESTIONS):
    for m, c in zip(("mlp", "cnn", "attention"), ("C0", "C1", "C2")):
      recs = [r for r in res["records"] if r["model"] == m
              and r["question"] == q and r.get("rhs", 1) == rhs]
      if not recs:
        continue
      n = [r["n"] for r in recs]
      ax.plot(n, [r["dense_s"] for r in recs], c + "-o", label=f"{m} dense")
      ax.plot(n, [r["matrix_free_s"] for r in recs], c + "--s",
              label=f"{m} matrix-free")
      for r in recs:
        ax.plot(r["n"], r[f"{r['auto']}_s"], "k*", ms=9)
    ax.set(xscale="log", yscale="log", xlabel="N", ylabel="seconds",
           title=f"{q}, R = {rhs} (★ = auto's choice)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "predict_routes.png"), dpi=110)
  return "![dense vs matrix-free](predict_routes.png)"
