"""``diagnostics_scaling``: matrix-free diagnostics against the dense route
as N grows.

For an MLP and a small CNN of the zoo (``O = 10`` outputs, traced: an
``N × N`` kernel), at growing ``N``, each in a fresh process (its own peak
memory):

* **dense**: the kernel by :func:`autontk.ntk_fn` (auto's plan), then
  float64 ``eigvalsh``: the top-10 eigenvalues, both effective ranks;
* **top10**: :func:`autontk.diagnostics.eigvals` (``k = 10``) on the
  kernel operator, matrix-free (LOBPCG);
* **rank**: :func:`autontk.diagnostics.effective_rank` (``tr² / ‖·‖²_F``,
  Hutch++, the default probes), matrix-free;
* **entropy**: the entropy-based effective rank (Hutch++ with stochastic
  Lanczos quadrature, the default probes and steps), matrix-free.

The first three are timed interleaved in one process (:func:`bench.timing
.interleaved`: a compile and a warm-up call, then rounds calling each in
turn); the entropy rank, tens of products in a row, once (its first call,
the compile of its products included). Each matrix-free answer's relative
error against the dense one is kept. ``ratio`` is ``(top10 + rank) /
dense``: the target is at most 0.25 at ``N = 10,000``. Peak memory is the
largest growth of the process's resident memory during one timed call
(sampled by a thread every 2 ms; after the compile, except the entropy
rank's). Auto's choice is what
:func:`autontk.diagnostics.report` (route ``"auto"``, the default 1 GiB
budget) takes for the spectrum and the two ranks, with its wall time.

Larger sizes run alone, and merge into the recorded result::

  python -m bench.diagnostics_scaling --n 10000 --model cnn --record
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

import autontk
from autontk import diagnostics as D
from bench import record, report
from bench.timing import interleaved
from bench.zoo import functions as zoo

NAME = "diagnostics_scaling"

MODELS = ("mlp", "cnn")
QUICK_SIZES = (200, 400)
FULL_SIZES = (250, 500, 1000)
ROUTE_KEYS = ("dense", "top10", "rank", "entropy")


def _model(name: str, n: int) -> Any:
  if name == "mlp":
    return zoo.deep_mlp(3, 64, 16, 10, n)
  return zoo.conv_net((8,), 8, 10, n)


def _rss_mib() -> float:
  """The process's resident memory now."""
  with open("/proc/self/statm") as fh:
    return int(fh.read().split()[1]) * resource.getpagesize() / 2 ** 20


class _PeakMemory:
  """The largest growth of resident memory during calls, sampled every
  ``every`` seconds by a thread (the calls release the GIL in XLA and
  LAPACK)."""

  def __init__(self, every: float = 0.002):
    self.every, self.peak_mib = every, 0.0

  def wrap(self, call: Callable[[], Any]) -> Callable[[], Any]:
    def run():
      start, top, done = _rss_mib(), [0.0], threading.Event()

      def sample():
        while not done.is_set():
          top[0] = max(top[0], _rss_mib())
          time.sleep(self.every)

      t = threading.Thread(target=sample, daemon=True)
      t.start()
      try:
        return jax.block_until_ready(call())
      finally:
        done.set()
        t.join()
        top[0] = max(top[0], _rss_mib())
        self.peak_mib = max(self.peak_mib, top[0] - start)
    return run


def _rel(a: Any, b: Any) -> float:
  a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b,
                                                                       float))
  return float(np.max(np.abs(a - b) / np.abs(b)))


def case(name: str, n: int, rounds: int = 3, dense_route: bool = True,
         with_report: bool = True) -> dict[str, Any]:
  """Both routes on model ``name`` at ``n`` examples, in this process
  (the matrix-free one alone without ``dense_route``; auto's report left
  out without ``with_report``)."""
  model = _model(name, n)
  op = autontk.ntk_operator(model.f, model.x1, model.params,
                            trace_axes=model.trace_axes)
  ntk = autontk.ntk_fn(model.f, trace_axes=model.trace_axes)
  jax.block_until_ready(op.trace())
  calls: dict[str, Callable[[], Any]] = {
      "top10": lambda: D.eigvals(op, 10, route="matrix-free").value,
      "rank": lambda: D.effective_rank(op, route="matrix-free").value,
      "entropy": lambda: D.effective_rank(op, kind="entropy",
                                          route="matrix-free").value}

  def dense():
    k = np.asarray(ntk(model.x1, None, model.params), np.float64)
    lam = np.linalg.eigvalsh(k)
    p = np.maximum(lam, 0.0) / np.maximum(lam, 0.0).sum()
    p = p[p > 0]
    return (lam[::-1][:10], float(np.trace(k) ** 2 / np.sum(k * k)),
            float(np.exp(-np.sum(p * np.log(p)))))

  if dense_route:
    calls["dense"] = dense
  peaks = {k: _PeakMemory() for k in calls}
  t0 = time.perf_counter()
  answers = {"entropy": peaks["entropy"].wrap(calls.pop("entropy"))()}
  entropy_s = time.perf_counter() - t0
  if rounds:
    answers.update({k: c() for k, c in calls.items()})  # compiles first
    stats = interleaved({k: peaks[k].wrap(c) for k, c in calls.items()},
                        rounds=rounds, time_s=0.0, max_rounds=rounds)
  else:
    stats = {}
    for k, c in calls.items():  # one call each, its compile included
      t1 = time.perf_counter()
      answers[k] = peaks[k].wrap(c)()
      stats[k] = {"median_s": time.perf_counter() - t1, "repeats": 0}
  stats["entropy"] = {"median_s": entropy_s}
  rec: dict[str, Any] = {"model": name, "n": n, "date_utc": time.strftime(
                             "%Y-%m-%d %H:%M", time.gmtime()),
                         "dense_kernel_mib": n * n * 8 / 2 ** 20}
  for key in ROUTE_KEYS:
    rec[f"{key}_s"] = stats[key]["median_s"] if key in stats else None
    rec[f"{key}_peak_mib"] = peaks[key].peak_mib if key in peaks else None
  rec["free_peak_mib"] = max(rec[f"{k}_peak_mib"] for k in ROUTE_KEYS[1:])
  rec["rounds"] = stats["top10"]["repeats"]
  if dense_route:
    top, ratio, entropy = answers["dense"]
    rec.update(top10_err=_rel(answers["top10"], top),
               rank_err=_rel(answers["rank"], ratio),
               entropy_err=_rel(answers["entropy"], entropy),
               ratio=(rec["top10_s"] + rec["rank_s"]) / rec["dense_s"])
  else:
    rec.update(top10_err=None, rank_err=None, entropy_err=None, ratio=None,
               values={k: np.asarray(v).tolist() for k, v in answers.items()})
  if not with_report:
    rec.update(auto_s=None, auto=None, auto_reason=None)
    return rec
  t0 = time.perf_counter()
  rep = D.report(model.f, model.x1, model.params, k=10)
  rec["auto_s"] = time.perf_counter() - t0
  rec["auto"] = {"top10": rep.spectrum.route,
                 "rank": rep.get("effective rank").route,
                 "entropy": rep.get("effective rank (entropy)").route}
  rec["auto_reason"] = rep.spectrum.reason
  return rec


def fresh(name: str, n: int, rounds: int, log: Callable[..., None] = print,
          dense_route: bool = True,
          with_report: bool = True) -> dict[str, Any]:
  """:func:`case` in a fresh process (its own memory)."""
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  p = subprocess.run([sys.executable, "-m", "bench.diagnostics_scaling",
                      "--case", name, "--n", str(n), "--rounds",
                      str(rounds)] + ([] if dense_route else ["--no-dense"])
                     + ([] if with_report else ["--no-report"]),
                     capture_output=True, text=True, env=env)
  if p.returncode:
    log(p.stderr[-3000:])
    raise RuntimeError(f"diagnostics_scaling {name} N={n} failed")
  return json.loads(p.stdout.strip().splitlines()[-1])


def _log_line(r: dict[str, Any]) -> str:
  return (f"{r['model']} N={r['n']}: dense {_g(r['dense_s'])} s, top10 "
          f"{_g(r['top10_s'])} s, rank {_g(r['rank_s'])} s, entropy "
          f"{_g(r['entropy_s'])} s, ratio {_g(r['ratio'])}, auto "
          f"{r['auto']}")


def _g(v: Any, fmt: str = ".3g") -> str:
  """A number, or ``–`` where the dense route was not run."""
  return "–" if v is None else format(v, fmt)


def run(cfg: Any, log: Callable[..., None]) -> dict[str, Any]:
  """The suite: every model and size, each in a fresh process."""
  sizes = QUICK_SIZES if cfg.quick else FULL_SIZES
  rounds = 1
  res: dict[str, Any] = {"sizes": list(sizes), "records": []}
  for name in MODELS:
    if not cfg.selected(name):
      continue
    for n in sizes:
      res["records"].append(fresh(name, n, rounds, log))
      log(_log_line(res["records"][-1]))
      cfg.save_partial(res)
  return res


def crossover(recs: list[dict[str, Any]]) -> int | None:
  """The smallest N from which top10 + rank matrix-free beat the dense
  route at every larger N run."""
  return report.crossover(
      recs, lambda r: None if r["ratio"] is None else r["ratio"] < 1)


def markdown(res: dict[str, Any]) -> str:
  rows = ["Seconds (median of the interleaved rounds; the entropy rank: "
          "one call, compile included; each row ran with the machine to "
          "itself), matrix-free "
          "against dense (kernel by auto's plan + "
          "float64 `eigvalsh`). `ratio` = (top10 + rank) / dense. Errors: "
          "relative, against the dense answers. Peak: the largest growth "
          "of resident memory during one call after the compile (the "
          "entropy rank's: its first call; sampled every 2 ms). Auto: the "
          "route `diagnostics.report` takes for top10 / rank / entropy.",
          "", "| model | N | dense s | top10 s | rank s | entropy s | ratio "
          "| top10 err | rank err | entropy err | dense peak MiB | "
          "top10 / rank / entropy peak MiB | auto (top10, rank, entropy) "
          "| report s |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(res["records"], key=lambda r: (r["model"], r["n"])):
    a = r["auto"]
    first = " †" if r.get("rounds") == 0 else ""
    rows.append(
        f"| {r['model']} | {r['n']}{first} | {_g(r['dense_s'])} | "
        f"{r['top10_s']:.3g} | {r['rank_s']:.3g} | {r['entropy_s']:.3g} | "
        f"{_g(r['ratio'], '.2f')} | {_g(r['top10_err'], '.1e')} | "
        f"{_g(r['rank_err'], '.1e')} | {_g(r['entropy_err'], '.1e')} | "
        f"{_g(r['dense_peak_mib'], '.0f')} | "
        f"{r['top10_peak_mib']:.0f} / {r['rank_peak_mib']:.0f} / "
        f"{r['entropy_peak_mib']:.0f} | {_auto(a)} | "
        f"{_g(r['auto_s'])} |")
  lines = ["", "† One call of each route, its compile included (no "
           "warm-up, no rounds: `--rounds 0`, for sizes where the dense "
           "route takes many minutes), without auto's report "
           "(`--no-report`: its dense choice would form the kernel again).",
           ""] if any(
               r.get("rounds") == 0 for r in res["records"]) else []
  lines += ["", "Crossover (top10 + rank matrix-free faster than the dense "
           "route from this N on, within the sizes run):", ""]
  for m in MODELS:
    recs = [r for r in res["records"] if r["model"] == m]
    if recs:
      c = crossover(recs)
      lines.append(f"* {m}: " + (f"N = {c}" if c else "none (dense faster "
                                 "at the largest N)"))
  return "\n".join(rows + lines) + "\n"


def _auto(a: dict[str, str] | None) -> str:
  """Auto's routes for top10, rank, entropy (``–`` where not run)."""
  if a is None:
    return "–"
  return ", ".join(_short(a[k]) for k in ("top10", "rank", "entropy"))


def _short(route: str) -> str:
  return "MF" if route == "matrix-free" else route


def figures(out_dir: str, res: dict[str, Any]) -> str:
  """``diagnostics_scaling.png``: seconds of each route against N."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return ""
  models = [m for m in MODELS if any(r["model"] == m for r in res["records"])]
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4),
                           squeeze=False)
  for ax, m in zip(axes[0], models):
    recs = sorted((r for r in res["records"] if r["model"] == m),
                  key=lambda r: r["n"])
    for key, style in zip(ROUTE_KEYS, ("k-o", "C0--s", "C1--^", "C2--v")):
      pts = [(r["n"], r[f"{key}_s"]) for r in recs if r[f"{key}_s"]]
      if pts:
        ax.plot(*zip(*pts), style,
                label=key if key == "dense" else f"{key} (matrix-free)")
    pts = [(r["n"], 0.25 * r["dense_s"]) for r in recs if r["dense_s"]]
    if pts:
      ax.plot(*zip(*pts), "k:", lw=1, label="25 % of dense")
    ax.set(xscale="log", yscale="log", xlabel="N (O = 10, traced)",
           ylabel="seconds", title=m)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "diagnostics_scaling.png"), dpi=110)
  plt.close(fig)
  return "![diagnostics: dense vs matrix-free](diagnostics_scaling.png)\n"


def _record(recs: list[dict[str, Any]], tag: str | None) -> str:
  """Merges ``recs`` into the recorded result (replacing the same model and
  N) and re-renders it."""
  info = record.machine_info()
  tag = tag or record.machine_tag(info)
  out_dir = record.results_dir(tag)
  res = record.load(out_dir, NAME) or {"records": []}
  new = {(r["model"], r["n"]) for r in recs}
  res["records"] = [r for r in res["records"]
                    if (r["model"], r["n"]) not in new] + recs
  res["sizes"] = sorted({r["n"] for r in res["records"]})
  record.stamp(res, suite=NAME, tag=tag, info=info,
               quick=bool(res.get("quick")))
  record.save(out_dir, NAME, res)
  record.write_markdown(out_dir, NAME, res, lambda r: markdown(r).rstrip()
                        + "\n\n" + figures(out_dir, r))
  return out_dir


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(prog="python -m bench.diagnostics_scaling",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--n", type=int, nargs="+", required=True,
                  help="numbers of examples")
  ap.add_argument("--model", choices=MODELS, nargs="+", default=MODELS)
  ap.add_argument("--rounds", type=int, default=2,
                  help="interleaved rounds after the warm-up (0: one call "
                       "of each route, its compile included)")
  ap.add_argument("--record", action="store_true",
                  help="merge into bench/results/<tag>/diagnostics_scaling")
  ap.add_argument("--tag", help="results folder (default: this machine's)")
  ap.add_argument("--no-dense", action="store_true",
                  help="the matrix-free route alone (no dense kernel)")
  ap.add_argument("--no-report", action="store_true",
                  help="leave out auto's report (at sizes where auto's dense "
                       "choice would compute the kernel again)")
  ap.add_argument("--case", choices=MODELS, help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.case:  # one case, in this process: a JSON line for fresh()
    print(json.dumps(case(a.case, a.n[0], a.rounds, not a.no_dense,
                          not a.no_report)))
    return
  recs = []
  for name in a.model:
    for n in a.n:
      recs.append(fresh(name, n, a.rounds, dense_route=not a.no_dense,
                        with_report=not a.no_report))
      print(_log_line(recs[-1]), flush=True)
  if a.record:
    print("recorded in", _record(recs, a.tag))
  else:
    print(json.dumps(recs))


if __name__ == "__main__":
  main()
