"""``autontk tune MODEL --routes QUESTION``: both routes, priced and timed.

For one kernel question on the model's NTK of ``x1`` (one solve, many
times, ``k`` eigenpairs), the dense route (the kernel by
:func:`autontk.ntk_fn`, then a Cholesky solve or ``eigh``) and the
matrix-free route (:mod:`autontk.solvers` on :func:`autontk.ntk_operator`)
are each run once to compile, then timed (the best of ``repeats`` runs),
beside :func:`autontk.route.choose_route`'s prices and its pick.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk import solvers
from autontk._api import ntk_fn
from autontk.cli import models
from autontk.operator import ntk_operator
from autontk.route import choose_route

TIMES = (0.1, 1.0, 10.0)
"""The ``"times"`` question's training times ``t``: it computes
``exp(−t·Θ/d) Y`` with ``d`` the mean of Θ's diagonal."""


def time_routes(model: dict[str, Any], question: str, *, k: int = 10,
                rhs: int = 1, tol: float = 1e-4, ridge: float = 1e-3,
                repeats: int = 2) -> dict[str, Any]:
  """Prices and times both routes of ``question`` on ``model``'s NTK.

  Args:
    model: a model dict (:func:`autontk.cli.models.build_model`).
    question: ``"solve"``, ``"times"`` or ``"eigsh"``.
    k: eigenpairs of ``"eigsh"``.
    rhs: right-hand sides ``R``.
    tol: the solvers' tolerance (and the iterations' estimate).
    ridge: the ``"solve"`` shift over the mean diagonal of the kernel.
    repeats: timed runs after the compiling one (the best is kept).

  Returns:
    A JSON-ready dict: ``priced`` (:class:`~autontk.route.RouteReport`'s
    fields), ``timed`` (``{route: {"first_s", "best_s"}}``), ``auto``,
    ``faster``, ``regret`` and ``rel_diff`` (the answers' relative
    difference).
  """
  options = models.ntk_options(model)
  kwargs, x, params = model["kwargs"], model["x1"], model["params"]
  op_options = {o: options[o] for o in ("trace_axes", "vmap_axes", "wrt",
                                        "precision") if o in options}
  op = ntk_operator(model["f"], x, params, **op_options, **kwargs)
  m = op.shape[0]
  y = jax.random.normal(jax.random.PRNGKey(1), (m, rhs), op.dtype)
  scale = float(op.trace()) / m
  shift = ridge * scale if question == "solve" else 0.0
  report = choose_route(op, question, rhs=rhs, k=k, tol=tol, shift=shift)
  ntk = ntk_fn(model["f"], **options)
  dense_kernel = lambda: op.layout.dense(
      jax.tree.leaves(ntk(x, None, params, **kwargs))[0])
  dense, free = _routes(question, op, dense_kernel, y, k, tol, shift, scale)
  timed, answers = {}, {}
  for name, fn in (("dense", dense), ("matrix_free", free)):
    first, best, answers[name] = _time(fn, repeats)
    timed[name] = {"first_s": first, "best_s": best}
  a, b = np.asarray(answers["matrix_free"]), np.asarray(answers["dense"])
  faster = min(timed, key=lambda r: timed[r]["best_s"])
  return {
      "question": question, "m": m, "rhs": rhs, "k": k, "tol": tol,
      "shift": shift, "priced": {
          "dense_s": report.dense_seconds,
          "matrix_free_s": report.matrix_free_seconds,
          "dense_bytes": report.dense_bytes,
          "matrix_free_bytes": report.matrix_free_bytes,
          "plan": report.plan, "reason": report.reason},
      "timed": timed, "auto": report.route, "faster": faster,
      "regret": timed[report.route]["best_s"] / timed[faster]["best_s"],
      "rel_diff": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def _routes(question: str, op: Any, kernel: Callable[[], Any], y: Any,
            k: int, tol: float, shift: float,
            scale: float) -> tuple[Callable[[], Any], Callable[[], Any]]:
  """``(dense, matrix_free)``: the two ways to answer ``question``."""
  m = op.shape[0]
  if question == "solve":
    dense = lambda: jax.scipy.linalg.solve(kernel() + shift * jnp.eye(m), y,
                                           assume_a="pos")
    free = lambda: solvers.solve(op, y, shift=shift, tol=tol, progress=False)
    return dense, free
  if question == "eigsh":
    dense = lambda: jnp.linalg.eigvalsh(kernel())[::-1][:k]
    free = lambda: solvers.eigsh(op, k, tol=tol)[0]
    return dense, free
  taus = jnp.asarray(TIMES) / scale
  flow = lambda lam: jnp.exp(-taus[:, None] * lam[None, :])

  def dense():
    w, v = jnp.linalg.eigh(kernel())
    return jnp.einsum("ij,tj,jr->tir", v, flow(w), v.T @ y)

  free = lambda: solvers.matfun(op, y, flow, tol=tol, progress=False)
  return dense, free


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
  """``(first call s, best of repeats s, value)``."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  best = first
  for _ in range(max(repeats, 0)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def format_routes(out: dict[str, Any]) -> str:
  """The table of :func:`time_routes`' result."""
  p, t = out["priced"], out["timed"]
  rows = [f"{out['question']} on M = {out['m']} (R = {out['rhs']}, "
          f"k = {out['k']}, tol = {out['tol']:g}, shift = "
          f"{out['shift']:.3g})",
          f"  {'route':<12} {'priced s':>10} {'timed s':>10} "
          f"{'first call s':>13}  memory (priced)"]
  for r, label in (("dense", "dense"), ("matrix_free", "matrix-free")):
    rows.append(f"  {label:<12} {p[r + '_s']:>10.3g} "
                f"{t[r]['best_s']:>10.3g} {t[r]['first_s']:>13.3g}  "
                f"{p[r + '_bytes'] / 2 ** 20:.4g} MiB")
  rows += [f"  matrix-free plan: {p['plan']}",
           f"  auto picks {out['auto']} ({p['reason']}); faster: "
           f"{out['faster']}; regret {out['regret']:.2f}; answers differ "
           f"by {out['rel_diff']:.1e} (relative)"]
  return "\n".join(rows)
