"""``CostEstimate``: what the planner knows about one candidate plan."""

from __future__ import annotations

import dataclasses
from typing import Any

from autontk._plan import Plan
from autontk.costmodel.predict import CostFeatures


@dataclasses.dataclass(frozen=True)
class CostEstimate:
  """Cost of one candidate plan, predicted (and measured where known).

  Attributes:
    plan: the candidate.
    flops, bytes_accessed, transcendentals: total work (loop trip counts
      and block counts applied), ``None`` when unknown.
    peak_memory: peak bytes; exact from XLA's buffer assignment when
      ``peak_memory_exact``, else an estimate from the lowered program.
    peak_memory_exact: see above.
    analysis_time: seconds spent tracing and lowering for the estimate.
    compile_time: seconds spent compiling it (``None`` if not compiled).
    predicted_time: predicted seconds per call (``None`` if not estimated).
    measured_time: measured median seconds per call, where known.
    feasible: within the memory budget (and supported).
    reason: why infeasible, or why not estimated; ``None`` otherwise.
    source: ``"lowered"``, ``"compiled"``, ``"scaled"`` (from block
      programs) or ``"skipped"``.
    blocks: number of batch blocks (1 unchunked).
    calls: compiled calls per evaluation (blocks of a host loop, else 1).
    loop_iterations: compiled loop iterations per evaluation.
    grouped_conv_flops, depthwise_conv_flops: the part of ``flops`` in
      grouped / depthwise convolutions (see :class:`~autontk.costmodel.HloCost`).
  """

  plan: Plan
  flops: float | None = None
  bytes_accessed: float | None = None
  transcendentals: float | None = None
  peak_memory: float | None = None
  peak_memory_exact: bool = False
  analysis_time: float = 0.0
  compile_time: float | None = None
  predicted_time: float | None = None
  measured_time: float | None = None
  feasible: bool = True
  reason: str | None = None
  source: str = "lowered"
  blocks: int = 1
  calls: int = 1
  loop_iterations: int = 0
  grouped_conv_flops: float = 0.0
  depthwise_conv_flops: float = 0.0

  @property
  def estimated(self) -> bool:
    return self.predicted_time is not None

  def features(self) -> CostFeatures:
    return CostFeatures(self.plan.implementation.name.lower(), self.flops,
                        self.bytes_accessed, self.transcendentals,
                        self.peak_memory, self.calls, self.loop_iterations,
                        self.blocks, self.grouped_conv_flops,
                        self.depthwise_conv_flops)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["plan"] = plan_to_dict(self.plan)
    return d

  @staticmethod
  def from_dict(d: dict[str, Any]) -> "CostEstimate":
    d = dict(d)
    d["plan"] = plan_from_dict(d["plan"])
    return CostEstimate(**d)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
  return plan.to_dict()


def plan_from_dict(d: dict[str, Any]) -> Plan:
  return Plan.from_dict(d)
