"""``scanned_regret``: auto's regret on models whose blocks are scanned.

Each model of :data:`bench.zoo.scanned.SCANNED` (none of them in the cost
model's own suite or device probe) is measured as ``regret_unseen``
measures its models in steady state (:func:`bench.regret_unseen.steady`:
a fresh process and cache directory, every explicit method and auto with
the cost model alone, called as users call them, interleaved), next to the
cost model's predicted time of each method. No tuning, no first calls.

With ``AUTONTK_BASELINE`` set to a folder holding another ``autontk``
package (e.g. ``git archive <commit> autontk | tar -x -C DIR``), every
model is measured a second time with that package in place of this one
(same device constants): the "before" columns.
"""

from __future__ import annotations

import os
from typing import Any

from bench import regret_unseen
from bench.config import RunConfig

BASELINE = "AUTONTK_BASELINE"


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """Runs the suite (each model in a fresh process); returns its JSON."""
  child = {"budget_s": 5.0 if cfg.quick else 10.0, "tune_budget_s": 0.0,
           "zoo": "scanned", "first_calls": False}
  res = regret_unseen.run_models(cfg, child, log)
  base = os.environ.get(BASELINE)
  if base:
    res["baseline"] = regret_unseen.run_models(
        cfg, dict(child, autontk=os.path.abspath(base)), log)
    res["baseline_path"] = base
  return res


def _x(v: float | None) -> str:
  return "-" if v is None else f"{v:.2f}"


def _predicted_ms(case: dict[str, Any], method: str) -> str:
  pred = case.get("predicted", {}).get(method)
  p = pred.get("predicted_s") if isinstance(pred, dict) else None
  return "-" if not p else f"{p * 1e3:.3g}"


def _row(case: dict[str, Any], before: dict[str, Any] | None) -> str:
  r = case.get("results", {})
  short = regret_unseen.SHORT
  cells = [case["name"]] + [regret_unseen._ms(r.get(m)) for m in short]
  cells += ["/".join(_predicted_ms(case, m) for m in short),
            regret_unseen._plan(r.get("auto", {})), _x(case.get("regret")),
            _x(case.get("regret_choice"))]
  if before is not None:
    b = before.get("results", {})
    cells += ["/".join(_predicted_ms(before, m) for m in short),
              regret_unseen._plan(b.get("auto", {})),
              _x(before.get("regret")), _x(before.get("regret_choice"))]
  return "| " + " | ".join(cells) + " |"


def _summary_line(label: str, res: dict[str, Any]) -> str:
  s = res.get("summary") or {}
  r, c = s.get("regret") or {}, s.get("regret_choice") or {}
  return (f"* {label}: auto's regret (cost model alone) geomean "
          f"{_x(r.get('geomean'))}, worst {_x(r.get('worst'))} over "
          f"{r.get('n', 0)} models; its choice alone geomean "
          f"{_x(c.get('geomean'))}, worst {_x(c.get('worst'))}")


def markdown(res: dict[str, Any]) -> str:
  """Summary lines and the per-model table (before and after)."""
  base = res.get("baseline")
  before = {c["name"]: c for c in (base or {}).get("cases", [])}
  head = ["model", "JC ms", "NTVP ms", "SD ms", "predicted ms JC/NTVP/SD",
          "auto plan", "regret", "choice"]
  if base:
    head += ["before: predicted ms JC/NTVP/SD", "before: auto plan",
             "before: regret", "before: choice"]
  lines = ["### Auto's regret on models with scanned blocks "
           "(`scanned_regret`)", "", _summary_line("this tree", res)]
  if base:
    lines.append(_summary_line(f"before (`{res.get('baseline_path')}`)",
                               base))
  load = res.get("load_start")
  lines += [
      "", "Target: worst regret ≤ 1.25. The machine was shared with other "
      "jobs while this ran (1-minute load average at the start: "
      f"{load[0]:.1f}); times are medians of interleaved calls in one "
      "process, so the regret (median(auto) / median(fastest explicit "
      "method)) is a ratio taken under the same load, in each tree's own "
      "process; `choice` is the chosen method's own `ntk` over the "
      "fastest (the choice alone, without auto's executable). The times "
      "shown are this tree's; the predicted times are each tree's cost "
      "model on the same device constants."
      if load else "", "",
      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for case in res.get("cases", []):
    if case.get("skipped"):
      continue
    lines.append(_row(case, before.get(case["name"]) if base else None))
  return "\n".join(lines)
