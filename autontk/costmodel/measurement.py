"""``Timing``: what timing one candidate on the device measured.

The record a timed :class:`~autontk.costmodel.estimate.CostEstimate` carries
(its ``timing``), filled by the timing protocol of :mod:`autontk.auto.timing`
and stored with the estimate in the plan cache and the tuner's journal.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Timing:
  """Measured seconds of one candidate.

  Attributes:
    median_s: median seconds per call over the repeats.
    min_s: the fastest repeat.
    repeats: calls timed.
    compile_s: seconds the first call took beyond a timed one (compiling).
    stopped_early: timing stopped because the candidate was already far
      slower than the best so far.
    confirmed_s: median seconds per call when timed again, interleaved
      with its close competitors (``None``: not confirmed). Where set, it is
      the candidate's measured time.

  >>> t = Timing(median_s=2e-3, min_s=1.9e-3, repeats=5, compile_s=0.4)
  >>> Timing.from_dict(t.to_dict()) == t
  True
  """

  median_s: float
  min_s: float
  repeats: int
  compile_s: float
  stopped_early: bool = False
  confirmed_s: float | None = None

  @property
  def seconds(self) -> float:
    """Seconds per call: the confirmed median where confirmed."""
    return self.median_s if self.confirmed_s is None else self.confirmed_s

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form (in cost reports, plan-cache rows, journals)."""
    return dataclasses.asdict(self)

  @staticmethod
  def from_dict(d: Mapping[str, Any]) -> "Timing":
    """Inverse of :meth:`to_dict`."""
    return Timing(**{f.name: d[f.name] for f in dataclasses.fields(Timing)
                     if f.name in d})
