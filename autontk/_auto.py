"""``implementation="auto"`` before the cost-model planner: a fixed choice.

Until the planner lands, "auto" uses structured derivatives when that method
is available and Jacobian contraction otherwise.
"""

from __future__ import annotations

from typing import Any

from autontk import methods
from autontk._options import Implementation
from autontk._plan import Plan


def default_plan(ntk, x1, x2, params, kwargs) -> Plan:
  del ntk, x1, x2, params, kwargs
  if Implementation.STRUCTURED_DERIVATIVES in methods.available():
    return Plan(Implementation.STRUCTURED_DERIVATIVES)
  return Plan(Implementation.JACOBIAN_CONTRACTION)


def make_planner(**options: Any):
  raise TypeError(f"Unknown options for ntk_fn: {sorted(options)}.")


def report(ntk, x1, x2, params, kwargs):
  raise NotImplementedError("Cost reports arrive with the cost-model planner.")
