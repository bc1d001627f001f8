"""``diagnostics_accuracy``: matrix-free diagnostics against their dense values.

On the NTKs of a small MLP and a small CNN of the zoo (N examples, the
output traced, so the kernel is ``(N, N)``), each estimator of
:mod:`autontk.diagnostics` on the matrix-free route (forced) is compared
with the exact dense value of the same kernel, over several seeds and
probe budgets (Lanczos steps for the eigenvalues): the median and largest
relative error, and the share of seeds whose reported error bar
(``Estimate.interval()``) holds the dense value; then every estimator at
its default budget on 40 seeds. The distance is between the kernel at the
parameters and at a perturbed copy (a second "checkpoint"); the alignment
uses one-hot labels of a random linear teacher.

Each kernel is formed once (:func:`autontk.ntk_fn`) and applied as a
float32 :class:`autontk.MatrixOperator`: an estimator's error is a matter
of the kernel's spectrum and the probes, and NTK-vector products through
the network give the same products up to float32 rounding (``1e-6``
relative, far below these errors) at many times the cost. The
``diagnostics_scaling`` suite compares the estimates on the network's own
operator with the dense values.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

import autontk
from autontk import diagnostics as D
from autontk.diagnostics import frobenius, spectrum
from bench.config import RunConfig
from bench.zoo import functions as zoo

ESTIMATORS = ("frobenius", "rank_ratio", "rank_entropy", "alignment",
              "distance", "top10")


def _models(n: int) -> dict[str, zoo.Model]:
  return {"mlp": zoo.deep_mlp(3, 64, 16, 10, n),
          "cnn": zoo.conv_net((8, 8), 8, 10, n)}


def _estimate(name: str, ka, kb, y, budget: int, seed: int,
              route: str) -> Any:
  common = {"route": route, "seed": seed}
  if name == "top10":
    return D.eigvals(ka, 10, steps=budget, **common)
  common["probes"] = budget
  if name == "frobenius":
    return D.frobenius_norm(ka, **common)
  if name == "rank_ratio":
    return D.effective_rank(ka, kind="ratio", **common)
  if name == "rank_entropy":
    return D.effective_rank(ka, kind="entropy", **common)
  if name == "alignment":
    return D.alignment(ka, y, **common)
  return D.kernel_distance(ka, kb, **common)


def _errors(est, exact) -> tuple[float, bool]:
  """Largest relative error, and whether the error bar holds the value."""
  value, exact = np.atleast_1d(est.value), np.atleast_1d(exact)
  rel = float(np.max(np.abs(value - exact) / np.abs(exact)))
  lo, hi = est.interval()
  inside = bool(np.all((np.atleast_1d(lo) <= exact + 1e-12 * np.abs(exact))
                       & (exact - 1e-12 * np.abs(exact)
                          <= np.atleast_1d(hi))))
  return rel, inside


def _kernels(m: zoo.Model):
  ka = D.kernels(m.f, x=m.x1, params=m.params)[None]
  moved = jax.tree.map(lambda p: p * 1.1 + 0.05 * np.std(np.asarray(p)),
                       m.params)
  kb = D.kernels(m.f, x=m.x1, params=moved)[None]
  teacher = np.random.default_rng(0).normal(size=(int(np.prod(
      m.x1.shape[1:])), 10))
  labels = np.argmax(np.asarray(m.x1).reshape(len(m.x1), -1) @ teacher, 1)
  return ka, kb, np.eye(10)[labels]


def _sweep(name: str, kerns: tuple, n: int, budgets: dict[str, tuple],
           seeds: int, log: Callable) -> list[dict[str, Any]]:
  """Each estimator at each budget over ``seeds`` seeds."""
  ka, kb, y, oa, ob = kerns
  rows = []
  for est_name, per in budgets.items():
    exact = _estimate(est_name, ka, kb, y, 40, 0, "dense").value
    for budget in per:
      rel, inside, seconds, method = [], [], [], ""
      for seed in range(seeds):
        t0 = time.perf_counter()
        est = _estimate(est_name, oa, ob, y, budget, seed, "matrix-free")
        seconds.append(time.perf_counter() - t0)
        r, ok = _errors(est, exact)
        rel.append(r)
        inside.append(ok)
        method = est.method
      rows.append({"model": name, "n": n, "estimator": est_name,
                   "budget": budget, "method": method, "seeds": seeds,
                   "exact": np.atleast_1d(exact)[0].item(),
                   "median_rel_err": float(np.median(rel)),
                   "max_rel_err": float(np.max(rel)),
                   "covered": float(np.mean(inside)),
                   "median_s": float(np.median(seconds))})
      log(rows[-1])
  return rows


def _formed(m: zoo.Model) -> tuple:
  """``(ka, kb, y)`` and the two kernels as float32 operators."""
  ka, kb, y = _kernels(m)
  return ka, kb, y, _as_operator(ka), _as_operator(kb)


def _as_operator(kern) -> Any:
  """The kernel formed once, as a float32 operator."""
  import jax.numpy as jnp
  return autontk.MatrixOperator(jnp.asarray(kern.dense(), jnp.float32))


DEFAULTS = {"frobenius": frobenius.PROBES, "rank_ratio": frobenius.PROBES,
            "rank_entropy": frobenius.PROBES,
            "alignment": frobenius.ALIGNMENT_PROBES,
            "distance": frobenius.DISTANCE_PROBES,
            "top10": spectrum.EIG_STEPS}
"""Each estimator's default budget."""


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """One row per model, estimator and probe budget, and the defaults."""
  n, seeds = (300, 10) if cfg.quick else (1000, 20)
  n_defaults, seeds_defaults = 1000, 40
  probes = (10, 20, 40, 80)
  budgets = {e: probes for e in ESTIMATORS}
  budgets["alignment"] = (10, 20, 40, 60, 80)
  budgets["rank_entropy"] = (10, 20, 40, 80)
  budgets["distance"] = (10, 20, 40, 80, 160)
  budgets["top10"] = (30, 60, 120)   # Lanczos steps (LOBPCG ignores them)
  res: dict[str, Any] = {"n": n, "seeds": seeds, "rows": [],
                         "defaults": []}
  for name in _models(8):
    if not cfg.selected(name):
      continue
    big = _formed(_models(n_defaults)[name])
    small = big if n == n_defaults else _formed(_models(n)[name])
    res["rows"] += _sweep(name, small, n, budgets, seeds, log)
    cfg.save_partial(res)
    res["defaults"] += _sweep(name, big, n_defaults,
                              {e: (b,) for e, b in DEFAULTS.items()},
                              seeds_defaults, log)
    cfg.save_partial(res)
  return res


def markdown(res: dict[str, Any]) -> str:
  lines = [f"Matrix-free estimates against the dense value, N = {res['n']} "
           f"(traced output), {res['seeds']} seeds per cell. `covered`: "
           "share of seeds whose error bar (±3 stderr, or ± the bound) "
           "holds the dense value. Budget: probes (Hutch++), Lanczos steps "
           "(top10).", "",
           "| model | estimator | method | budget | dense value | median "
           "rel. err | max rel. err | covered | median s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in res["rows"]:
    lines.append(f"| {r['model']} | {r['estimator']} | {r['method']} | "
                 f"{r['budget']} | {r['exact']:.4g} | "
                 f"{r['median_rel_err']:.2e} | {r['max_rel_err']:.2e} | "
                 f"{r['covered']:.0%} | {r['median_s']:.2f} |")
  if res.get("defaults"):
    d = res["defaults"]
    lines += ["", f"At the default budgets, N = {d[0]['n']}, "
              f"{d[0]['seeds']} seeds:", "",
              "| model | estimator | method | budget | dense value | median "
              "rel. err | max rel. err | covered |",
              "|---|---|---|---|---|---|---|---|"]
    for r in d:
      lines.append(f"| {r['model']} | {r['estimator']} | {r['method']} | "
                   f"{r['budget']} | {r['exact']:.4g} | "
                   f"{r['median_rel_err']:.2e} | {r['max_rel_err']:.2e} | "
                   f"{r['covered']:.0%} |")
  return "\n".join(lines) + "\n"


def figures(out_dir: str, res: dict[str, Any]) -> str:
  try:
    import matplotlib
  except ImportError:
    return ""
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = sorted({r["model"] for r in res["rows"]})
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2),
                           squeeze=False)
  for ax, model in zip(axes[0], models):
    for est in ESTIMATORS:
      rows = [r for r in res["rows"] if r["model"] == model
              and r["estimator"] == est]
      if rows:
        ax.plot([r["budget"] for r in rows],
                [max(r["median_rel_err"], 1e-16) for r in rows],
                marker="o", label=est)
    ax.axhline(0.02, color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", title=f"{model}, N = {res['n']}",
           xlabel="probes (Lanczos steps for top10)",
           ylabel="median relative error vs dense")
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = f"{out_dir}/diagnostics_accuracy.png"
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return "![accuracy against probes](diagnostics_accuracy.png)\n"
