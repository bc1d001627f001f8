"""CG's iterations against the bound the route chooser starts from.

:func:`autontk.route.cg_iterations` prices Nyström-preconditioned CG at
:data:`autontk.route.CG_TYPICAL` times the worst-case bound
``½·√κ·ln(2/tol)`` (:func:`autontk.route.cg_bound`). This suite measures
the ratio the constant was read from: ``autontk.solvers.solve`` (``tol =
1e-4``, ridge ``1e-3 · trace/N``, ``rank="auto"``) on the NTKs (O = 1,
traced) of the ``predict_routes`` models at N = 512 (and the MLP at 2048)
and of four models that benchmark does not run (a deeper and a wider MLP,
a two-layer CNN, a wider attention block) at N = 1024, with one and eight
right-hand sides: the iterations taken, the rank the sketch reached, the
bound at that rank, and their ratio. Both model sets are run in quick and
full mode (the sizes are the calibration's).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from bench import report
from bench.zoo import functions as zoo

TOL, RIDGE = 1e-4, 1e-3

MODELS: dict[str, tuple[Callable[[int], zoo.Model], tuple[int, ...], bool]] = {
    "mlp": (lambda n: zoo.deep_mlp(3, 64, 16, 1, n), (512, 2048), False),
    "cnn": (lambda n: zoo.conv_net((8,), 6, 1, n), (512,), False),
    "attention": (lambda n: zoo.attention_block(4, 16, 1, n), (512,), False),
    "mlp 5×128": (lambda n: zoo.deep_mlp(5, 128, 32, 1, n), (1024,), True),
    "mlp 2×256": (lambda n: zoo.deep_mlp(2, 256, 8, 1, n), (1024,), True),
    "cnn 16-16": (lambda n: zoo.conv_net((16, 16), 8, 1, n), (1024,), True),
    "attention 8×32": (lambda n: zoo.attention_block(8, 32, 1, n), (1024,),
                       True)}
"""name -> (model at N, the Ns, not in ``predict_routes``)."""


def case(model: zoo.Model, rhs: int) -> dict[str, Any]:
  """One solve: its iterations, rank and the bound at that rank."""
  import autontk
  from autontk import route, solvers
  op = autontk.ntk_operator(model.f, model.x1, model.params,
                            trace_axes=model.trace_axes)
  m, trace = op.shape[0], float(op.trace())
  shift = RIDGE * trace / m
  y = jax.random.normal(jax.random.PRNGKey(1), (m, rhs), op.dtype)
  _, info = solvers.solve(op, y, shift=shift, tol=TOL, return_info=True,
                          progress=False)
  bound = route.cg_bound(m, TOL, shift, trace, info.rank)
  return {"m": m, "rhs": rhs, "iterations": info.iterations,
          "rank": info.rank, "bound": bound,
          "priced": route.cg_iterations(m, TOL, shift, trace, info.rank),
          "ratio": info.iterations / bound, "converged": info.converged}


def run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  from autontk import route
  res: dict[str, Any] = {"typical": route.CG_TYPICAL, "records": []}
  for name, (make, sizes, held_out) in MODELS.items():
    for n in sizes:
      for rhs in (1, 8):
        if not cfg.selected(f"{name} N={n} R={rhs}"):
          continue
        rec = {"model": name, "n": n, "held_out": held_out,
               **case(make(n), rhs)}
        res["records"].append(rec)
        log(f"{name} N={n} R={rhs}: {rec['iterations']} iterations, rank "
            f"{rec['rank']}, bound {rec['bound']} (ratio "
            f"{rec['ratio']:.2f})")
        cfg.save_partial(res)
  return res


def markdown(res: dict[str, Any]) -> str:
  recs = res["records"]
  rows = [[r["model"] + (" (held out)" if r["held_out"] else ""), r["n"],
           r["rhs"], r["rank"], r["iterations"], r["bound"], r["priced"],
           f"{r['ratio']:.2f}"] for r in recs]
  lines = [report.table(["model", "N", "R", "sketch rank", "CG iterations",
                         "bound", "priced", "iterations / bound"], rows)]
  for label, keep in (("the predict_routes models", False),
                      ("the held-out models", True), ("all", None)):
    ratios = [r["ratio"] for r in recs if keep is None or
              r["held_out"] == keep]
    if ratios:
      lines.append(f"* {label}: iterations / bound geometric mean "
                   f"{report.geomean(ratios):.2f}, median "
                   f"{float(np.median(ratios)):.2f}, range "
                   f"{min(ratios):.2f}–{max(ratios):.2f} ({len(ratios)} "
                   "solves)")
  return "\n".join([lines[0], ""] + lines[1:] + [
      "", f"The route chooser prices CG at CG_TYPICAL = {res['typical']} × "
      "the bound."])
