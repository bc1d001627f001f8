"""Tables, CSV and PNG plots of the case-based suites (:mod:`bench.compare`).

``<suite>_md(res)`` renders a suite's Markdown; :func:`figures` writes
``<suite>.csv`` (one row per case, runner and method) and ``<suite>.png``
beside its JSON.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")
SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD", "auto": "auto",
         "auto_tuned": "tuned", "nt1": "NT 1", "nt2": "NT 2", "nt3": "NT 3",
         "torch_jc": "torch JC", "torch_ntvp": "torch NTVP",
         "jax_jacrev": "jax jacrev"}


# Record helpers ---------------------------------------------------------------


def med(rec: dict | None) -> float | None:
  if not isinstance(rec, dict):
    return None
  return rec.get("median_s")


def best_of(recs: dict[str, dict], keys) -> tuple[str | None, float | None]:
  pairs = [(k, med(recs.get(k))) for k in keys]
  pairs = [(k, t) for k, t in pairs if t is not None]
  if not pairs:
    return None, None
  return min(pairs, key=lambda kt: kt[1])


def flops_pick(recs: dict[str, dict], keys) -> str | None:
  """neural-tangents' AUTO rule: fewest compiled FLOPs (first on ties)."""
  pairs = [(k, recs.get(k, {}).get("flops")) for k in keys]
  pairs = [(k, f) for k, f in pairs if f is not None]
  if not pairs:
    return None
  return min(pairs, key=lambda kf: kf[1])[0]


def ms(t: float | None) -> str:
  if t is None:
    return "n/a"
  if t >= 10:
    return f"{t:.1f} s"
  if t >= 1:
    return f"{t:.2f} s"
  return f"{t * 1e3:.3g} ms"


def ratio(a: float | None, b: float | None) -> str:
  if a is None or b is None or b == 0:
    return "n/a"
  r = a / b
  return f"{r:.3g}×"


def cell(rec: dict | None) -> str:
  if not isinstance(rec, dict) or not rec:
    return "n/a"
  if rec.get("over_budget"):
    return f"over budget ({rec['peak_bytes'] / 2**20:.0f} MiB)"
  if "error" in rec:
    return "n/a"
  if rec.get("skipped_slow"):
    return "not run"
  return ms(med(rec))


def geomean(xs) -> float | None:
  xs = [x for x in xs if x is not None and x > 0]
  if not xs:
    return None
  return math.exp(sum(math.log(x) for x in xs) / len(xs))


def crossover(recs: list[dict], wins) -> int | None:
  """The smallest ``n`` from which ``wins(record)`` holds at every larger
  ``n`` run (records where it is ``None``, not measured, are skipped)."""
  best = None
  for r in sorted(recs, key=lambda r: -r["n"]):
    won = wins(r)
    if won is None:
      continue
    if not won:
      break
    best = r["n"]
  return best


def table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


# CSV --------------------------------------------------------------------------


CSV_FIELDS = ("suite", "case", "runner", "method", "median_s", "min_s",
              "repeats", "first_call_s", "compile_s", "flops",
              "bytes_accessed", "peak_bytes", "over_budget", "rel_err", "plan",
              "planning_s", "error")


def write_csv(res: dict, path: str) -> None:
  with open(path, "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for c in res.get("cases", []):
      for runner, recs in c.get("results", {}).items():
        for method, rec in recs.items():
          w.writerow(dict(rec, suite=res["suite"], case=c["name"],
                          runner=runner, method=method))


# Suites -----------------------------------------------------------------------


def reference_md(res: dict) -> str:
  rows_t, rows_r = [], []
  for c in res["cases"]:
    r = c["results"]
    a, nt, to, jx = (r.get(k, {}) for k in ("autontk", "nt", "torch", "jax"))
    a_best, a_t = best_of(a, EXPLICIT)
    nt_best, nt_t = best_of(nt, ("nt1", "nt2", "nt3"))
    to_best, to_t = best_of(to, ("torch_jc", "torch_ntvp"))
    pick = flops_pick(nt, ("nt1", "nt2", "nt3"))
    rows_t.append([c["name"], f"{c['n_params']:,}", c["out_dim"],
                   f"{c['n1']}×{c['n2']}", "trace" if c["trace"] else "full"]
                  + [cell(a.get(m)) for m in EXPLICIT]
                  + [cell(a.get("auto")) + f" ({SHORT.get(a.get('auto', {}).get('plan_method'), '-')})"]
                  + [cell(nt.get(k)) for k in ("nt1", "nt2", "nt3")]
                  + [SHORT.get(pick, "n/a")]
                  + [cell(to.get(k)) for k in ("torch_jc", "torch_ntvp")]
                  + [cell(jx.get("jax_jacrev"))])
    errs = [rec.get("rel_err") for recs in r.values() for rec in recs.values()
            if isinstance(rec, dict) and rec.get("rel_err") is not None]
    sd, nt3 = a.get("structured_derivatives", {}), nt.get("nt3", {})
    rows_r.append([
        c["name"], f"{SHORT.get(a_best, 'n/a')} {ms(a_t)}",
        f"{SHORT.get(nt_best, 'n/a')} {ms(nt_t)}", ratio(nt_t, a_t),
        ratio(med(nt.get(pick)) if pick else None, a_t),
        ratio(to_t, a_t), ratio(med(jx.get("jax_jacrev")), a_t),
        ratio(med(nt3), med(sd)),
        ratio(sd.get("first_call_s"), nt3.get("first_call_s")),
        ratio(sd.get("flops"), nt3.get("flops")),
        f"{max(errs):.1e}" if errs else "n/a"])
  all_errs = [(c["name"], runner, m, rec.get("rel_err"))
              for c in res["cases"] for runner, recs in c["results"].items()
              for m, rec in recs.items()
              if isinstance(rec, dict) and rec.get("rel_err") is not None]
  bad = [f"{n}/{SHORT.get(m, m)} ({e:.1e})" for n, _, m, e in all_errs
         if e > 1e-3]
  check = (f"Kernel check: {len(all_errs)} kernels from all peers and methods;"
           f" largest relative deviation "
           f"{max((e for *_, e in all_errs), default=float('nan')):.1e}"
           + (f"; MISMATCHES (> 1e-3): {', '.join(bad)}." if bad
              else " — every peer computed the same kernel."))
  head_t = (["case", "P", "O", "N", "kernel", "JC", "NTVP", "SD",
             "auto (pick)", "NT 1", "NT 2", "NT 3", "NT AUTO pick",
             "torch JC", "torch NTVP", "jax jacrev"])
  head_r = ["case", "autontk best", "NT best", "NT best / autontk best",
            "NT AUTO / autontk best", "torch best / autontk best",
            "jacrev / autontk best", "NT 3 / SD (median)",
            "SD / NT 3 (first call)", "SD / NT 3 (FLOPs)", "max rel err"]
  out = ["### Reference cases: median time per call (same run)", "",
         table(head_t, rows_t), "",
         "### Reference cases: ratios (> 1× means autontk is faster)", "",
         "Peer columns: peer's time / autontk's best explicit method. "
         "`NT 3 / SD` > 1× means autontk's structured derivatives beat "
         "neural-tangents' method 3; `SD / NT 3 (first call)` < 1.5× is "
         "the first-call target. `max rel err`: the largest relative deviation of "
         "any peer's kernel from autontk's Jacobian contraction.", "",
         table(head_r, rows_r), "", check]
  return "\n".join(out + _head_to_head_md(res))


def _head_to_head_md(res: dict) -> list[str]:
  """Structured derivatives against method 3 in alternating rounds: each
  round's ratio, their median per case, and the geometric means."""
  rows, medians, single, bounds = [], [], [], []
  for c in res["cases"]:
    h = c.get("head_to_head")
    if not h:
      continue
    rs = [n / s for s, n in zip(h["sd_s"], h["nt3_s"]) if s and n]
    m = float(np.median(rs)) if rs else None
    n3 = med(c["results"].get("nt", {}).get("nt3"))
    sd = med(c["results"]["autontk"].get("structured_derivatives"))
    one = n3 / sd if n3 and sd else None
    medians.append(m)
    single.append(one)
    share = (c.get("sd_phases") or {}).get("cotangents")
    bound = _cotangent_bound(h, share)
    bounds.append(bound)
    rows.append([c["name"], " / ".join(ms(t) for t in h["sd_s"]),
                 " / ".join(ms(t) for t in h["nt3_s"]),
                 " / ".join(f"{x:.2f}" for x in rs),
                 f"{m:.2f}×" if m else "n/a",
                 f"{share:.0%}" if share is not None else "n/a",
                 f"{bound:.2f}×" if bound else "n/a"])
  if not rows:
    return []
  g, g1 = geomean(medians), geomean(single)
  summary = (f"Geometric mean over the cases of the per-case median: "
             f"**{g:.2f}×**" if g else "No round finished")
  summary += (f" (the main run's single `NT 3 / SD (median)` column: "
              f"{g1:.2f}×)." if g1 else ".")
  gb = geomean(bounds)
  if gb:
    summary += (f" With pair products that took no time at all, the "
                f"geometric mean would be at most **{gb:.2f}×** (the last "
                f"column's).")
  return ["", "### Structured derivatives against method 3, alternating "
          "rounds", "",
          "Each round times structured derivatives in this process, then "
          "method 3 in the peer's, case by case; a round's ratio is NT 3 / "
          "SD within it, so a shared machine's drift between the main run "
          "and the peer's lands in one round's ratio, not in the result.",
          "",
          "`SD cotangents`: the share of structured derivatives' time in "
          "its probing passes (one reverse pass per output entry and example, "
          "as method 3 runs them), from a `jax.profiler` trace summed by the "
          "method's named scopes. `bound`: method 3's median over the "
          "cotangents' time (that share of structured derivatives' median), "
          "the ratio if the pair products took no time.",
          "", table(["case", "SD per round", "NT 3 per round",
                     "NT 3 / SD per round", "median", "SD cotangents",
                     "bound"], rows), "", summary]


def _cotangent_bound(h: dict, share: float | None) -> float | None:
  """Method 3's median over structured derivatives' cotangent time."""
  sd = [t for t in h["sd_s"] if t]
  nt3 = [t for t in h["nt3_s"] if t]
  if not (sd and nt3 and share):
    return None
  return float(np.median(nt3)) / (float(np.median(sd)) * share)


def _slope(xs, ys, last: bool = True) -> float | None:
  pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
         if x and y and y > 0]
  if len(pts) < 2:
    return None
  pts = pts[-3:] if last else pts[:3]
  a = np.array(pts)
  return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def _scaling_series(res: dict, prefix: str, key: str):
  """{method: (xs, flops/entry, time/entry)} for the width or O sweep."""
  series: dict[str, tuple[list, list, list]] = {}
  for c in res["cases"]:
    if not c["note"].startswith(prefix):
      continue
    x = (int(c["note"].split("W=")[1].split()[0]) if key == "width"
         else c["out_dim"])
    for m in EXPLICIT + ("auto",):
      rec = c["results"]["autontk"].get(m, {})
      xs, fs, ts = series.setdefault(m, ([], [], []))
      xs.append(x)
      fl = rec.get("flops")
      fs.append(fl / c["kernel_entries"] if fl else None)
      ts.append(med(rec) / c["kernel_entries"] if med(rec) else None)
  for v in series.values():
    order = np.argsort(v[0])
    for lst in v:
      lst[:] = [lst[i] for i in order]
  return series


def scaling_md(res: dict) -> str:
  out = []
  for prefix, key, label in (("width sweep", "width", "W"),
                             ("output sweep", "out", "O")):
    s = _scaling_series(res, prefix, key)
    if not s:
      continue
    xs = s[EXPLICIT[0]][0]
    rows = []
    for m, (x, fl, t) in s.items():
      slopes = [_slope(x, fl, last=False), _slope(x, fl, last=True)]
      rows.append([SHORT[m]] + [f"{v:.3g}" if v else "n/a" for v in fl]
                  + [f"{v:.2f}" if v is not None else "n/a" for v in slopes])
    out += [f"### MLP 16-W-W-O: compiled FLOPs per NTK entry vs {label}", "",
            table(["method"] + [f"{label}={x}" for x in xs]
                  + ["slope (first 3)", "slope (last 3)"], rows), ""]
  sw = _scaling_series(res, "width sweep", "width")
  so = _scaling_series(res, "output sweep", "out")
  expected = {
      "jacobian_contraction": ("N·O·[FP] + N²·O²·P", "2", "-1 → 0"),
      "ntk_vector_products": ("N²·O·[FP]", "2", "-1"),
      "structured_derivatives": ("N·O·[FP] + N²·O²·L·W (dense MJJMP)",
                                 "1 (while N·O ≫ W)", "-1 → 0"),
  }
  rows = []
  for m, (cost, ew, eo) in expected.items():
    w = sw.get(m)
    o = so.get(m)
    rows.append([SHORT[m], cost, ew,
                 _fmt_slope(w and _slope(w[0], w[1], last=False)),
                 _fmt_slope(w and _slope(w[0], w[1], last=True)), eo,
                 _fmt_slope(o and _slope(o[0], o[1], last=True))])
  out += [
      "### The paper's cost table against measured FLOPs scaling", "",
      "Per NTK entry (the kernel has N²·O² entries), for an L-layer width-W "
      "MLP ([FP] ~ L·W², P ~ L·W²); slopes are log-log slopes of compiled "
      "FLOPs per entry.", "",
      table(["method", "time (paper)", "expected slope in W",
             "measured, small W", "measured, large W", "expected slope in O",
             "measured in O (large O)"], rows), "",
      "Structured derivatives are one order lower in W than the other two "
      "while the N²·O² term dominates; at large W the per-example "
      "forward/backward passes (N·O·[FP], slope 2) take over, which is why "
      "the slope rises at the wide end with a fixed N·O."]
  return "\n".join(out)


def _fmt_slope(v) -> str:
  return f"{v:.2f}" if isinstance(v, float) else "n/a"


def regret_md(res: dict) -> str:
  rows, auto_r, tuned_r, nt_r, plan_ratio = [], [], [], [], []
  for c in res["cases"]:
    a = c["results"]["autontk"]
    best, bt = best_of(a, EXPLICIT)
    au, tu = a.get("auto", {}), a.get("auto_tuned", {})
    pick = flops_pick(a, EXPLICIT)
    r_auto = med(au) / bt if med(au) and bt else None
    r_tuned = med(tu) / bt if med(tu) and bt else None
    r_nt = med(a.get(pick)) / bt if pick and bt else None
    auto_r.append(r_auto)
    tuned_r.append(r_tuned)
    nt_r.append(r_nt)
    pr = au.get("planning_over_compile")
    plan_ratio.append(pr)
    rows.append([c["name"], f"{c['n_params']:,}", c["out_dim"],
                 f"{c['n1']}×{c['n2']}", "trace" if c["trace"] else "full"]
                + [cell(a.get(m)) for m in EXPLICIT]
                + [SHORT.get(best, "n/a"), au.get("plan", "n/a"),
                   f"{r_auto:.2f}" if r_auto else "n/a",
                   tu.get("plan", "n/a") if "error" not in tu else "n/a",
                   f"{r_tuned:.2f}" if r_tuned else "n/a",
                   SHORT.get(pick, "n/a"), f"{r_nt:.2f}" if r_nt else "n/a",
                   ms(au.get("planning_s")), ms(au.get("compile_s")),
                   f"{pr:.2f}" if pr else "n/a"])
  head = ["case", "P", "O", "N", "kernel", "JC", "NTVP", "SD", "best",
          "auto plan", "auto regret", "tuned plan", "tuned regret",
          "NT rule pick", "NT rule regret", "planning", "compile (chosen)",
          "planning / compile"]

  def summ(xs):
    ok = [x for x in xs if x]
    if not ok:
      return "n/a"
    return f"geomean {geomean(ok):.3f}, worst {max(ok):.2f} ({len(ok)} cases)"

  return "\n".join([
      "### Auto's regret = time(auto's plan) / time(best explicit method)", "",
      f"* auto (cost model): {summ(auto_r)}",
      f"* auto with tuning (`autontk.tune`): {summ(tuned_r)}",
      f"* neural-tangents' rule (fewest FLOPs) on the same measurements: "
      f"{summ(nt_r)}",
      f"* planning time / compile time of the chosen plan: "
      f"{summ(plan_ratio).replace('geomean', 'geomean').replace('worst', 'max')}",
      "", table(head, rows)])


def memory_md(res: dict) -> str:
  rows = []
  for c in res["cases"]:
    a = c["results"]["autontk"]
    cells = []
    for m in EXPLICIT:
      rec = a.get(m, {})
      pk = rec.get("peak_bytes")
      cells.append(cell(rec) + (f" / {pk / 2**20:.0f} MiB"
                                if pk and not rec.get("over_budget") else ""))
    au = a.get("auto", {})
    pk = au.get("peak_bytes")
    cells.append(f"{cell(au)} / {pk / 2**20:.0f} MiB ({au.get('plan', '-')})"
                 if pk else f"{cell(au)} ({au.get('plan', '-')})")
    rows.append([c["name"], f"{c['n_params']:,}", c["out_dim"],
                 f"{c['n1']}×{c['n2']}"] + cells)
  return "\n".join([
      "### ResNet / ViT / Mixer: median time / compiled peak memory, full "
      "O×O kernel", "",
      f"Budget: {res.get('budget_bytes', 0) / 2**20:.0f} MiB (also given to "
      "auto as `memory_budget`). Programs whose compiled peak memory "
      "exceeds it are compiled and analysed but not run.",
      "", table(["case", "P", "O", "N", "JC", "NTVP", "SD", "auto"], rows)])


# Plots ------------------------------------------------------------------------


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_reference(res: dict, path: str) -> None:
  plt = _plt()
  names = [c["name"] for c in res["cases"]]
  # (peer runner, peer methods, autontk methods compared with, label)
  peers = [("nt", ("nt1", "nt2", "nt3"), EXPLICIT,
            "neural-tangents best / autontk best"),
           ("nt", ("nt3",), ("structured_derivatives",),
            "neural-tangents method 3 / autontk SD"),
           ("torch", ("torch_jc", "torch_ntvp"), EXPLICIT,
            "torch.func best / autontk best"),
           ("jax", ("jax_jacrev",), EXPLICIT,
            "jax jacrev+einsum / autontk best")]
  fig, ax = plt.subplots(figsize=(10, 4.5))
  width = 0.8 / len(peers)
  for i, (runner, keys, ours, label) in enumerate(peers):
    vals = []
    for c in res["cases"]:
      _, a_t = best_of(c["results"].get("autontk", {}), ours)
      _, p_t = best_of(c["results"].get(runner, {}), keys)
      vals.append(p_t / a_t if a_t and p_t else np.nan)
    ax.bar(np.arange(len(names)) + i * width, vals, width, label=label)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_yscale("log")
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("peer time / autontk time")
  ax.set_title("Reference cases (above 1: autontk faster)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_scaling(res: dict, path: str) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, 4, figsize=(17, 4))
  for ax, (prefix, key, label, what) in zip(axes, (
      ("width sweep", "width", "width W", 1),
      ("width sweep", "width", "width W", 2),
      ("output sweep", "out", "output size O", 1),
      ("output sweep", "out", "output size O", 2))):
    s = _scaling_series(res, prefix, key)
    for m, (x, fl, t) in s.items():
      ys = fl if what == 1 else t
      pts = [(a, b) for a, b in zip(x, ys) if b]
      if pts:
        ax.plot(*zip(*pts), "o-" if m != "auto" else "k--",
                label=SHORT[m], ms=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("FLOPs per NTK entry" if what == 1
                  else "seconds per NTK entry")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  axes[0].set_title("MLP 16-W-W-10: FLOPs / entry")
  axes[1].set_title("MLP 16-W-W-10: time / entry")
  axes[2].set_title("MLP 16-128-128-O: FLOPs / entry")
  axes[3].set_title("MLP 16-128-128-O: time / entry")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_regret(res: dict, path: str) -> None:
  plt = _plt()
  names, ra, rt, rn = [], [], [], []
  for c in res["cases"]:
    a = c["results"]["autontk"]
    _, bt = best_of(a, EXPLICIT)
    pick = flops_pick(a, EXPLICIT)
    names.append(c["name"])
    ra.append(med(a.get("auto")) / bt if med(a.get("auto")) and bt else np.nan)
    rt.append(med(a.get("auto_tuned")) / bt
              if med(a.get("auto_tuned")) and bt else np.nan)
    rn.append(med(a.get(pick)) / bt if pick and bt else np.nan)
  fig, ax = plt.subplots(figsize=(10, 4.5))
  x = np.arange(len(names))
  ax.bar(x - 0.27, ra, 0.27, label="autontk auto (cost model)")
  ax.bar(x, rt, 0.27, label="autontk auto (tuned)")
  ax.bar(x + 0.27, rn, 0.27, label="NT rule: fewest FLOPs")
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_yscale("log")
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
  ax.set_ylabel("time / best explicit method")
  ax.set_title("Regret of automatic method choice (1 is ideal)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_memory(res: dict, path: str) -> None:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  markers = {"jacobian_contraction": "o", "ntk_vector_products": "s",
             "structured_derivatives": "^", "auto": "x"}
  for m, mk in markers.items():
    pts = [(c["results"]["autontk"].get(m, {}).get("peak_bytes"),
            med(c["results"]["autontk"].get(m))) for c in res["cases"]]
    pts = [(p / 2**20, t) for p, t in pts if p and t]
    if pts:
      ax.scatter(*zip(*pts), marker=mk, label=SHORT[m])
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("compiled peak memory (MiB)")
  ax.set_ylabel("median time (s)")
  budget = res.get("budget_bytes")
  if budget:
    ax.axvline(budget / 2**20, color="r", lw=0.8, ls=":", label="budget")
  ax.set_title("ResNet / ViT / Mixer at several O: time vs peak memory")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# Entry -------------------------------------------------------------------------


PLOTS = {"reference": plot_reference, "scaling": plot_scaling,
         "regret": plot_regret, "memory": plot_memory}


def figures(out_dir: str, res: dict, suite: str) -> str:
  """Writes ``<suite>.csv`` and ``<suite>.png``; Markdown linking them."""
  write_csv(dict(res, suite=suite), os.path.join(out_dir, f"{suite}.csv"))
  text = f"Every record: [{suite}.csv]({suite}.csv)."
  try:
    PLOTS[suite](res, os.path.join(out_dir, f"{suite}.png"))
  except Exception as e:  # noqa: BLE001 - a broken plot must not lose data
    return text + f" (plot failed: {type(e).__name__}: {e})"
  return text + f"\n\n![{suite}]({suite}.png)"
