"""``implementation="auto"``: the cost-model planner behind ``ntk_fn``.

``ntk_fn(f)`` with no planner options shares one default :class:`Planner`;
``ntk_fn(f, memory_budget=..., shortlist=..., ...)`` builds its own (see
:class:`~autontk.planner.PlannerOptions`). Plans are memoised per NtkFn and
call signature, so only the first call of a signature pays for planning.
"""

from __future__ import annotations

from typing import Any

from autontk._plan import Plan
from autontk.calibration import CalibratedPredictor
from autontk.cached_planner import CachedPlanner, with_cached_measurements
from autontk.planner import Planner, PlannerOptions
from autontk.report import CostReport

_DEFAULT_PLANNER: Planner | None = None
_DEFAULT_CACHED: CachedPlanner | None = None


def default_planner() -> Planner:
  global _DEFAULT_PLANNER
  if _DEFAULT_PLANNER is None:
    _DEFAULT_PLANNER = Planner(PlannerOptions(predictor=CalibratedPredictor()))
  return _DEFAULT_PLANNER


def _planner_of(ntk: Any) -> Planner:
  p = getattr(ntk, "_planner", None)
  p = getattr(p, "planner", p)  # a CachedPlanner wraps the cost-model planner
  return p if isinstance(p, Planner) else default_planner()


def default_plan(ntk, x1, x2, params, kwargs) -> Plan:
  """The plan of the default planner for this call (memoised)."""
  global _DEFAULT_CACHED
  if _DEFAULT_CACHED is None:
    _DEFAULT_CACHED = CachedPlanner(default_planner())
  return _DEFAULT_CACHED(ntk, x1, x2, params, kwargs)


def make_planner(**options: Any) -> CachedPlanner:
  """A planner with ``ntk_fn``'s auto options (unknown names raise).

  ``tune`` (bool or :class:`~autontk.tuner.TuneOptions`) and ``plan_cache``
  (a :class:`~autontk.PlanCache`, or ``False``) configure the persistent
  plan cache around it (docs/cli.md).
  """
  tune = options.pop("tune", False)
  plan_cache = options.pop("plan_cache", None)
  options.setdefault("predictor", None)
  if options["predictor"] is None:
    options["predictor"] = CalibratedPredictor()
  return CachedPlanner(Planner(PlannerOptions.make(**options)), plan_cache,
                       tune)


def report(ntk, x1, x2, params, kwargs) -> CostReport:
  """The full cost report (every candidate estimated) for this call.

  For an explicit implementation the report covers that method only.
  """
  from autontk._options import Implementation
  planner = _planner_of(ntk)
  impl = ntk.options.implementation
  if impl is not Implementation.AUTO:
    import dataclasses
    opts = dataclasses.replace(planner.options, methods=(impl,))
    planner = Planner(opts)
  rep = planner.plan_report(ntk, x1, x2, params, kwargs, full=True)
  return with_cached_measurements(rep, ntk, x1, x2, params, kwargs)
