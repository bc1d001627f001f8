"""``CostReport``: every candidate considered for a call, and the choice.

One report, whatever the candidates came from: the planner's live
estimates (``ntk.report(...)``), a tuning run (``TuneResult.report()``) or
the plan cache's rows (the ``autontk report`` and ``autontk cache show``
commands). ``str(report)`` is the text table, ``report.to_json()`` the same
data as JSON (:meth:`CostReport.from_json` reads it back), and
``report.plot(path)`` a figure: predicted against measured time where
measurements exist, and time against peak memory with the budget line. How
to read it: ``docs/cost_report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from autontk._plan import Plan, plan_from_dict, plan_to_dict
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.memory import MemoryBudget


@dataclasses.dataclass(frozen=True)
class CostReport:
  """The candidates of one call signature and the plan chosen among them.

  Attributes:
    estimates: one :class:`~autontk.costmodel.CostEstimate` per candidate,
      in candidate order (methods unchunked first, then memory variants).
    chosen: the plan in use (``None`` when nothing was chosen yet).
    budget: the memory budget candidates were checked against (``None``
      when unknown, e.g. rows read from the plan cache).
    planning_time: seconds spent choosing (lowering, compiling the
      shortlist; or tuning); the chosen plan's compile is reused by the call.
    predictor: description of the time predictor.
    device: the device kind planned for.
    call: a short description of the call (shapes, parameter count) or of
      where the report came from.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> ntk = autontk.ntk_fn(f, vmap_axes=0)
  >>> report = ntk.report(jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  >>> report.chosen == ntk.plan(jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  True
  """

  estimates: tuple[CostEstimate, ...]
  chosen: Plan | None
  budget: MemoryBudget | None = None
  planning_time: float = 0.0
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

  # Text -------------------------------------------------------------------------

  def rows(self) -> list[dict[str, str]]:
    """The table's rows as strings (what ``str(report)`` prints)."""
    return [_row(e, e.plan == self.chosen) for e in self.estimates]

  def __str__(self) -> str:
    rows = self.rows()
    cols = list(rows[0]) if rows else []
    width = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    lines = [f"Cost report: {self.call}",
             f"device {self.device}; predictor {self.predictor}"]
    if self.budget is not None:
      lines.append(f"memory budget {self.budget.bytes / 1e6:.4g} MB "
                   f"({self.budget.source})")
    lines.append(f"planning took {self.planning_time:.3f} s")
    lines.append("chosen: " + ("-" if self.chosen is None else
                               self.chosen.describe()))
    lines += ["", "  ".join(c.ljust(width[c]) for c in cols),
              "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols).rstrip()
              for r in rows]
    lines.append("(* chosen; ~ peak memory estimated from the lowered "
                 "program, not compiled)")
    return "\n".join(lines)

  # JSON -------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"estimates": [e.to_dict() for e in self.estimates],
            "chosen": None if self.chosen is None else plan_to_dict(
                self.chosen),
            "budget": None if self.budget is None else dataclasses.asdict(
                self.budget),
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
        chosen=None if d.get("chosen") is None else plan_from_dict(
            d["chosen"]),
        budget=None if d.get("budget") is None else MemoryBudget(
            **d["budget"]),
        planning_time=float(d.get("planning_time") or 0.0),
        predictor=d.get("predictor", ""), device=d.get("device", ""),
        call=d.get("call", ""))

  @staticmethod
  def from_json(text: str) -> "CostReport":
    return CostReport.from_dict(json.loads(text))

  # Plot -------------------------------------------------------------------------

  def plot(self, path: str | None = None) -> Any:
    """Draws the report; saves to ``path`` if given. Needs matplotlib.

    Left: predicted against measured time (candidates with a measurement).
    Right: time (measured where known, else predicted) against peak memory,
    infeasible candidates as crosses, the budget as a vertical line, the
    chosen plan circled.

    Returns:
      The matplotlib ``Figure``.
    """
    plt = _pyplot(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    self._plot_accuracy(ax1)
    self._plot_memory(ax2, plt)
    fig.suptitle(f"autontk cost report: {self.call}", fontsize=9)
    fig.tight_layout()
    if path is not None:
      fig.savefig(path, dpi=110)
    return fig

  def _plot_accuracy(self, ax) -> None:
    meas = [e for e in self.estimates
            if e.estimated and e.measured_time is not None]
    if meas:
      xs = [e.predicted_time for e in meas]
      ys = [e.measured_time for e in meas]
      ax.scatter(xs, ys, c=[_color(e) for e in meas])
      lo, hi = min(xs + ys), max(xs + ys)
      ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = predicted")
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.legend(loc="upper left", fontsize=8)
    else:
      ax.text(0.5, 0.5, "no measurements\n(the cost model alone chose)",
              ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="predicted time (s)", ylabel="measured time (s)",
           title="predicted vs measured")

  def _plot_memory(self, ax, plt) -> None:
    for e in self.estimates:
      t = e.measured_time or e.predicted_time
      if e.peak_memory is None or not t:
        continue
      ax.scatter(e.peak_memory / 1e6, t, c=_color(e),
                 marker="o" if e.feasible else "x")
      if e.plan == self.chosen:
        ax.scatter(e.peak_memory / 1e6, t, s=200, facecolors="none",
                   edgecolors="k", label="chosen")
    if self.budget is not None:
      ax.axvline(self.budget.bytes / 1e6, color="r", ls=":", label="budget")
    ax.set(xscale="log", yscale="log", xlabel="peak memory (MB)",
           ylabel="time (s), measured where known",
           title="time vs memory (x: infeasible)")
    handles = [plt.Line2D([], [], marker="o", ls="", color=_COLORS[m],
                          label=m) for m in _COLORS]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0],
              fontsize=8, loc="best")


def _pyplot(path: str | None):
  try:
    import matplotlib  # optional: the plot extra
    if path is not None:
      matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
  except ImportError as e:
    raise ImportError("CostReport.plot needs matplotlib: pip install "
                      "'autontk[plot]'.") from e
  return plt


def _row(e: CostEstimate, chosen: bool) -> dict[str, str]:
  c = e.plan.chunking
  f = e.features
  status = "ok" if e.feasible and (e.estimated or e.measured_time) else (
      e.reason or "-")
  return {
      "": "*" if chosen else "",
      "method": e.plan.implementation.name.lower(),
      "config": "" if e.plan.config is None else _config(e.plan.config),
      "chunking": "-" if c is None else f"{c.scheme} b={c.block_size}",
      "blocks": str(f.blocks) if e.source != "skipped" else "-",
      "GFLOP": _num(f.flops, 1e9),
      "MB moved": _num(f.bytes_accessed, 1e6),
      "kernels": _count(f.kernels, e),
      "loop iters": _count(f.inner_loop_iterations + f.loop_iterations, e),
      "peak MB": _num(f.peak_memory, 1e6) + (
          "" if f.peak_memory is None or f.peak_memory_exact else "~"),
      "predicted ms": _num(e.predicted_time, 1e-3),
      "measured ms": _num(e.measured_time, 1e-3),
      "compile s": _num(e.compile_time, 1.0),
      "status": status,
  }


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


def _count(v: float, e: CostEstimate) -> str:
  return "-" if e.source == "skipped" else f"{v:.4g}"


def _num(v: float | None, unit: float) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{v / unit:.3g}"
