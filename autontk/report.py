"""``CostReport``: every candidate the planner considered, and its choice.

``str(report)`` is a text table, ``report.to_json()`` the same data as JSON
(and :meth:`CostReport.from_json` reads it back), ``report.plot(path)`` a
figure: predicted against measured time where measurements exist, and
predicted time against peak memory with the budget line. How to read it:
docs/cost_report.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from autontk._plan import Plan
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.memory import MemoryBudget


@dataclasses.dataclass(frozen=True)
class CostReport:
  """The planner's view of one call signature.

  Attributes:
    estimates: one :class:`~autontk.costmodel.CostEstimate` per candidate,
      in candidate order (methods unchunked first, then chunked).
    chosen: the plan the planner chose.
    budget: the memory budget candidates were checked against.
    planning_time: seconds the planner spent (lowering, compiling the
      shortlist, choosing); the chosen plan's compile is reused by the call.
    predictor: description of the time predictor.
    device: the device kind planned for.
    call: a short description of the call's shapes.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> ntk = autontk.ntk_fn(f, vmap_axes=0)
  >>> report = ntk.report(jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  >>> report.chosen == ntk.plan(jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  True
  """

  estimates: tuple[CostEstimate, ...]
  chosen: Plan
  budget: MemoryBudget
  planning_time: float
  predictor: str = ""
  device: str = ""
  call: str = ""

  @property
  def chosen_estimate(self) -> CostEstimate:
    for e in self.estimates:
      if e.plan == self.chosen:
        return e
    raise KeyError(self.chosen)

  def with_measurements(self, times: Mapping[Plan, float]) -> "CostReport":
    """A copy with ``measured_time`` filled in for the given plans."""
    ests = tuple(dataclasses.replace(e, measured_time=float(times[e.plan]))
                 if e.plan in times else e for e in self.estimates)
    return dataclasses.replace(self, estimates=ests)

  # Text ----------------------------------------------------------------------

  def rows(self) -> list[dict[str, str]]:
    """The table's rows as strings (what ``str(report)`` prints)."""
    out = []
    for e in self.estimates:
      c = e.plan.chunking
      status = "ok" if e.feasible and e.estimated else (e.reason or "-")
      out.append({
          "": "*" if e.plan == self.chosen else "",
          "method": e.plan.implementation.name.lower(),
          "config": "" if e.plan.config is None else _config(e.plan.config),
          "chunking": "-" if c is None else f"{c.scheme} b={c.block_size}",
          "blocks": str(e.blocks) if e.estimated else "-",
          "GFLOP": _num(e.flops, 1e9),
          "MB moved": _num(e.bytes_accessed, 1e6),
          "peak MB": _num(e.peak_memory, 1e6) + (
              "" if e.peak_memory is None or e.peak_memory_exact else "~"),
          "pred ms": _num(e.predicted_time, 1e-3),
          "meas ms": _num(e.measured_time, 1e-3),
          "compile s": _num(e.compile_time, 1.0),
          "status": status,
      })
    return out

  def __str__(self) -> str:
    rows = self.rows()
    cols = list(rows[0]) if rows else []
    width = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    head = "  ".join(c.ljust(width[c]) for c in cols)
    lines = [
        f"Cost report: {self.call}",
        f"device {self.device}; predictor {self.predictor}",
        f"memory budget {self.budget.bytes / 1e6:.4g} MB "
        f"({self.budget.source}); planning took {self.planning_time:.3f} s",
        f"chosen: {self.chosen.describe()}", "", head,
        "  ".join("-" * width[c] for c in cols)]
    for r in rows:
      lines.append("  ".join(r[c].ljust(width[c]) for c in cols).rstrip())
    lines.append("(* chosen; ~ estimated from the lowered program, not "
                 "compiled)")
    return "\n".join(lines)

  # JSON ----------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"estimates": [e.to_dict() for e in self.estimates],
            "chosen": self.chosen.to_dict(),
            "budget": dataclasses.asdict(self.budget),
            "planning_time": self.planning_time, "predictor": self.predictor,
            "device": self.device, "call": self.call}

  def to_json(self, **kwargs: Any) -> str:
    """The report as JSON (``kwargs`` go to ``json.dumps``)."""
    kwargs.setdefault("indent", 1)
    return json.dumps(self.to_dict(), **kwargs)

  @staticmethod
  def from_dict(d: Mapping[str, Any]) -> "CostReport":
    return CostReport(
        estimates=tuple(CostEstimate.from_dict(e) for e in d["estimates"]),
        chosen=Plan.from_dict(d["chosen"]),
        budget=MemoryBudget(**d["budget"]),
        planning_time=float(d["planning_time"]),
        predictor=d.get("predictor", ""), device=d.get("device", ""),
        call=d.get("call", ""))

  @staticmethod
  def from_json(text: str) -> "CostReport":
    return CostReport.from_dict(json.loads(text))

  # Plot ----------------------------------------------------------------------

  def plot(self, path: str | None = None):
    """Draws the report; saves to ``path`` if given. Needs matplotlib.

    Left: predicted against measured time (candidates with a measurement).
    Right: predicted time against peak memory, infeasible candidates as
    crosses, the budget as a vertical line, the chosen plan circled.

    Returns:
      The matplotlib ``Figure``.
    """
    try:
      import matplotlib
      if path is not None:
        matplotlib.use("Agg", force=False)
      import matplotlib.pyplot as plt
    except ImportError as e:
      raise ImportError("CostReport.plot needs matplotlib: pip install "
                        "'autontk[plot]'.") from e
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    est = [e for e in self.estimates if e.estimated]
    meas = [e for e in est if e.measured_time is not None]
    if meas:
      xs = [e.predicted_time for e in meas]
      ys = [e.measured_time for e in meas]
      ax1.scatter(xs, ys, c=[_color(e) for e in meas])
      lo, hi = min(xs + ys), max(xs + ys)
      ax1.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = predicted")
      ax1.set_xscale("log")
      ax1.set_yscale("log")
      ax1.legend(loc="upper left", fontsize=8)
    else:
      ax1.text(0.5, 0.5, "no measurements\n(the cost model alone chose)",
               ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("predicted time (s)")
    ax1.set_ylabel("measured time (s)")
    ax1.set_title("predicted vs measured")
    for e in est:
      if e.peak_memory is None:
        continue
      ax2.scatter(e.peak_memory / 1e6, e.predicted_time, c=_color(e),
                  marker="o" if e.feasible else "x")
      if e.plan == self.chosen:
        ax2.scatter(e.peak_memory / 1e6, e.predicted_time, s=200,
                    facecolors="none", edgecolors="k", label="chosen")
    ax2.axvline(self.budget.bytes / 1e6, color="r", ls=":", label="budget")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("peak memory (MB)")
    ax2.set_ylabel("predicted time (s)")
    ax2.set_title("time vs memory (x: infeasible)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=_COLORS[m],
                          label=m) for m in _COLORS]
    ax2.legend(handles=handles + ax2.get_legend_handles_labels()[0],
               fontsize=8, loc="best")
    fig.suptitle(f"autontk cost report: {self.call}", fontsize=9)
    fig.tight_layout()
    if path is not None:
      fig.savefig(path, dpi=110)
    return fig


_COLORS = {"jacobian_contraction": "tab:blue",
           "ntk_vector_products": "tab:orange",
           "structured_derivatives": "tab:green"}


def _color(e: CostEstimate) -> str:
  return _COLORS.get(e.plan.implementation.name.lower(), "tab:gray")


def _config(config: Any) -> str:
  try:
    fields = dataclasses.asdict(config)
  except TypeError:
    return repr(config)
  return ",".join(f"{k}={v}" for k, v in fields.items())


def _num(v: float | None, unit: float) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{v / unit:.3g}"
