"""``AutoPlanner``: the planner ``ntk_fn`` hands its NtkFns.

Per call signature, a plan comes from

1. this process's memo (the cost of a dict lookup);
2. else the :class:`~autontk.PlanCache`, keyed by model signature (one
   trace of ``f`` and one SQLite read, no candidate compiled);
3. else the tuner, with ``tune`` (timing the candidates on the device);
4. else the cost-model :class:`~autontk.auto.planner.Planner`,

and is then stored in the cache and the memo. The memo keeps the planning
call's report and lowered programs, so ``ntk.report(...)`` after a plan
completes that report instead of planning again.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import jax

from autontk import _compat, _compiled
from autontk._options import Implementation
from autontk._plan import Plan
from autontk.auto import tuner as tuner_lib
from autontk.auto.planner import (Planner, PlannerOptions, PlanningCall,
                                  signature_of)
from autontk.auto.report import CostReport
from autontk.costmodel.estimate import ProgramCache
from autontk.plancache import PlanCache, compilation, shared_cache


@dataclasses.dataclass
class _Entry:
  """What the memo keeps of one planned signature."""

  plan: Plan
  report: CostReport | None = None
  programs: ProgramCache | None = None


class AutoPlanner:
  """Memo, plan cache, tuner and cost model behind ``implementation="auto"``.

  Args:
    cost_model: the cost-model :class:`~autontk.auto.planner.Planner`.
    cache: a :class:`PlanCache`; ``None`` for the shared one of the current
      cache directory; ``False`` to plan without a persistent cache.
    tune: ``True`` or a :class:`~autontk.auto.tuner.TuneOptions` to time
      candidates on first use of a signature (a plan the cost model chose
      alone is then re-tuned once).
  """

  def __init__(self, cost_model: Planner | None = None,
               cache: PlanCache | bool | None = None, tune: Any = False):
    if cache is not None and cache is not False and not isinstance(
        cache, PlanCache):
      raise TypeError(f"`plan_cache` must be a PlanCache, None or False; got "
                      f"{type(cache).__name__}.")
    self.cost_model = cost_model or Planner()
    self._cache = cache
    self.tune = tune
    self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

  @property
  def cache(self) -> PlanCache | None:
    """The cache in use (``None``: no persistent cache)."""
    if self._cache is False:
      return None
    return self._cache if self._cache is not None else shared_cache()

  # The NtkFn protocol -----------------------------------------------------------

  def plan(self, ntk: Any, x1: Any, x2: Any, params: Any,
           kwargs: dict[str, Any]) -> Plan:
    memo, key = self._slot(ntk, x1, x2, params, kwargs)
    entry = memo.get(key) if key is not None else None
    if entry is None:
      entry = self._plan(ntk, x1, x2, params, kwargs)
      if key is not None:
        memo[key] = entry
    return entry.plan

  def report(self, ntk: Any, x1: Any, x2: Any, params: Any,
             kwargs: dict[str, Any]) -> CostReport:
    """Every candidate estimated; for an explicit implementation, that
    method's candidates only. Reuses the planning call where there was one
    (no second planning, no new compile)."""
    impl = ntk.options.implementation
    if impl is not Implementation.AUTO:
      call = PlanningCall(ntk, x1, x2, params, kwargs)
      report = self.cost_model.restricted((impl,)).plan_call(call, full=True)
      return self._with_measurements(
          dataclasses.replace(report, chosen=Plan(impl)), ntk, call)
    plan = self.plan(ntk, x1, x2, params, kwargs)
    memo, key = self._slot(ntk, x1, x2, params, kwargs)
    entry = memo.get(key) if key is not None else _Entry(plan)
    call = PlanningCall(ntk, x1, x2, params, kwargs, entry.programs)
    if entry.report is None:
      report = self.cost_model.plan_call(call, full=True)
    else:
      report = self.cost_model.complete(entry.report, call)
    entry.report = dataclasses.replace(report, chosen=plan)
    entry.programs = call.detach()
    return self._with_measurements(entry.report, ntk, call)

  # Planning ---------------------------------------------------------------------

  def _slot(self, ntk, x1, x2, params, kwargs) -> tuple[dict, Any]:
    leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
    key = _compiled.call_key(treedef, leaves)
    try:
      hash(key)
    except TypeError:
      return {}, None
    return self._memo.setdefault(ntk, {}), key

  def _plan(self, ntk, x1, x2, params, kwargs) -> _Entry:
    cache = self.cache
    if self.cost_model.options.predictor is not None:
      cache = None  # a custom predictor is an experiment: do not persist it
    tune = self.tune and not _traced(x1, x2, params, kwargs)
    if cache is None and not tune:
      return self._model_plan(ntk, x1, x2, params, kwargs, None, None)
    sig = signature_of(ntk, x1, x2, params, kwargs, self.cost_model.options)
    if cache is not None:
      compilation.use_beside(cache)  # the plan is compiled next
      plan = cache.lookup(sig)
      if plan is not None and (not tune or
                               cache.source(sig) in ("tuned", "import")):
        return _Entry(plan)
    if tune:
      options = (self.tune if isinstance(self.tune, tuner_lib.TuneOptions)
                 else tuner_lib.TuneOptions(progress=False))
      result = tuner_lib.tune(ntk, x1, x2, params, options=options,
                              cache=cache if cache is not None else False,
                              planner=self.cost_model, **kwargs)
      return _Entry(result.plan, result.report())
    return self._model_plan(ntk, x1, x2, params, kwargs, cache, sig)

  def _model_plan(self, ntk, x1, x2, params, kwargs, cache, sig) -> _Entry:
    call = PlanningCall(ntk, x1, x2, params, kwargs)
    report = self.cost_model.plan_call(call)
    if cache is not None:
      cache.store(sig, report.chosen, source="model",
                  candidates=[e for e in report.estimates
                              if e.source != "skipped"],
                  planning_s=report.planning_time)
    return _Entry(report.chosen, report, call.detach())

  def _with_measurements(self, report: CostReport, ntk: Any,
                         call: PlanningCall) -> CostReport:
    """``report`` with the tuner's measured times from the plan cache."""
    cache = self.cache
    if cache is None or _traced(call.x1, call.x2, call.params, call.kwargs):
      return report
    times = cache.measured_times(signature_of(
        ntk, call.x1, call.x2, call.params, call.kwargs,
        self.cost_model.options))
    return report.with_measurements(times) if times else report


def _traced(*trees: Any) -> bool:
  return any(_compat.is_tracer(v) for v in jax.tree.leaves(trees))


_DEFAULT: AutoPlanner | None = None


def default_planner() -> AutoPlanner:
  """The planner ``ntk_fn(f)`` uses without planner options (one per
  process, so NtkFns of the same model share its choices)."""
  global _DEFAULT
  if _DEFAULT is None:
    _DEFAULT = AutoPlanner()
  return _DEFAULT


def make_planner(**options: Any) -> AutoPlanner:
  """A planner with ``ntk_fn``'s auto options (unknown names raise).

  ``tune`` (bool or :class:`~autontk.auto.tuner.TuneOptions`) and
  ``plan_cache`` (a :class:`~autontk.PlanCache`, or ``False``) configure
  the persistent plan cache around it (``docs/cli.md``); every other option
  is a field of :class:`~autontk.auto.planner.PlannerOptions`.
  """
  tune = options.pop("tune", False)
  plan_cache = options.pop("plan_cache", None)
  return AutoPlanner(Planner(PlannerOptions.make(**options)), plan_cache,
                     tune)
