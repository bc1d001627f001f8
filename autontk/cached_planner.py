"""``implementation="auto"`` with a memory: the planner behind the plan cache.

:class:`CachedPlanner` wraps the cost-model planner (:mod:`autontk.planner`):
a signature's plan comes from this process's memo, else from the
:class:`~autontk.PlanCache` (no candidate compiled), else from the planner
or, with ``tune``, from the tuner, and is then stored. ``ntk_fn(f)`` uses
one around the default planner; ``ntk_fn(f, tune=..., plan_cache=...)`` its
own (see :func:`autontk._auto.make_planner`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import weakref
from typing import Any

from autontk._plan import Plan
from autontk.plancache import PlanCache, default_directory


class CachedPlanner:
  """The ``"auto"`` planner behind a :class:`PlanCache` (and the tuner).

  Per call signature: a plan memoised in this process is reused at no cost;
  else the model signature is looked up in the cache (one trace of ``f``
  and one SQLite read, no candidate compiled); else ``planner`` plans (or,
  with ``tune``, the tuner times the candidates) and the result is stored.
  With ``tune``, a plan the cost model chose alone is re-tuned once.

  Args:
    planner: the cost-model planner (:class:`autontk.planner.Planner`).
    cache: a :class:`PlanCache`; ``None`` for ``PlanCache()`` (created on
      first use); ``False`` to plan without a persistent cache.
    tune: ``True`` or a :class:`autontk.tuner.TuneOptions` to time
      candidates on first use of a signature.
  """

  def __init__(self, planner: Any, cache: "PlanCache | bool | None" = None,
               tune: Any = False):
    if cache is not None and cache is not False and not isinstance(
        cache, PlanCache):
      raise TypeError(f"`plan_cache` must be a PlanCache, None or False; got "
                      f"{type(cache).__name__}.")
    self.planner = planner
    self._cache = cache
    self.tune = tune
    self._memo: Any = weakref.WeakKeyDictionary()

  @property
  def cache(self) -> "PlanCache | None":
    """The cache in use (``PlanCache()`` follows ``$AUTONTK_CACHE_DIR``)."""
    if self._cache is False:
      return None
    if self._cache is None:
      return _default_cache()
    return self._cache

  def plan_report(self, *args: Any, **kwargs: Any) -> Any:
    return self.planner.plan_report(*args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    # Everything else (options, candidates, estimate...) is the planner's.
    if name == "planner":
      raise AttributeError(name)
    return getattr(self.planner, name)

  def __call__(self, ntk: Any, x1: Any, x2: Any, params: Any,
               kwargs: dict[str, Any]) -> Plan:
    from autontk.planner import call_key
    key = call_key(x1, x2, params, kwargs)
    try:
      memo = self._memo.setdefault(ntk, {})
      hash(key)
    except TypeError:
      memo, key = {}, None
    if key is not None and key in memo:
      return memo[key]
    plan = self._plan(ntk, x1, x2, params, kwargs)
    if key is not None:
      memo[key] = plan
    return plan

  def _plan(self, ntk, x1, x2, params, kwargs) -> Plan:
    cache = self.cache
    if cache is None and not self.tune:
      return self.planner(ntk, x1, x2, params, kwargs)
    if cache is not None and _custom_predictor(self.planner):
      cache = None  # a custom predictor is an experiment: do not persist it
      if not self.tune:
        return self.planner(ntk, x1, x2, params, kwargs)
    if self.tune and _traced(x1, x2, params, kwargs):
      # Under an outer jit there is nothing concrete to time: plan (and
      # look up) as without tuning.
      return CachedPlanner(self.planner, self._cache)._plan(
          ntk, x1, x2, params, kwargs)
    sig = signature_of(ntk, x1, x2, params, kwargs)
    if cache is not None:
      plan = cache.lookup(sig)
      if plan is not None and (not self.tune or
                               cache.source(sig) in ("tuned", "import")):
        return plan
    if self.tune:
      from autontk import tuner
      options = (self.tune if isinstance(self.tune, tuner.TuneOptions)
                 else tuner.TuneOptions(progress=False))
      result = tuner.tune(ntk, x1, x2, params, options=options,
                          cache=cache if cache is not None else False,
                          **kwargs)
      return result.plan
    report = self.planner.plan_report(ntk, x1, x2, params, kwargs)
    from autontk.tuner import estimate_features
    rows = [{"plan": e.plan, "predicted_s": e.predicted_time,
             "measured_s": e.measured_time, "feasible": e.feasible,
             "reason": e.reason, "features": estimate_features(e)}
            for e in report.estimates]
    cache.store(sig, report.chosen, source="model", candidates=rows,
                planning_s=report.planning_time)
    return report.chosen


_DEFAULT_CACHES: dict[pathlib.Path, PlanCache] = {}


def _default_cache() -> PlanCache:
  directory = default_directory()
  if directory not in _DEFAULT_CACHES:
    _DEFAULT_CACHES[directory] = PlanCache(directory)
  return _DEFAULT_CACHES[directory]


def signature_of(ntk: Any, x1: Any, x2: Any, params: Any,
                 kwargs: dict[str, Any]) -> Any:
  """The cache key of one call of ``ntk``: its model signature, plus the
  planner options when they differ from the defaults (a memory budget or a
  method list changes the choice)."""
  from autontk import _auto
  from autontk.signature import model_signature
  extra = None
  options = getattr(_auto._planner_of(ntk), "options", None)  # noqa: SLF001
  if options is not None and dataclasses.is_dataclass(options):
    default = type(options)()
    changed = {f.name: repr(getattr(options, f.name))
               for f in dataclasses.fields(options)
               if f.compare and getattr(options, f.name) != getattr(default,
                                                                     f.name)}
    extra = {"planner": changed} if changed else None
  return model_signature(ntk, x1, x2, params, kwargs, extra=extra)


def _custom_predictor(planner: Any) -> bool:
  from autontk.calibration import CalibratedPredictor
  predictor = getattr(getattr(planner, "options", None), "predictor", None)
  return predictor is not None and not isinstance(predictor,
                                                  CalibratedPredictor)


def _traced(*trees: Any) -> bool:
  import jax

  from autontk import _compat
  return any(_compat.is_tracer(v) for v in jax.tree.leaves(trees))


def with_cached_measurements(report: Any, ntk: Any, x1: Any, x2: Any,
                             params: Any, kwargs: dict[str, Any]) -> Any:
  """``report`` with measured times from the plan cache filled in (for
  candidates the tuner timed on this signature); unchanged otherwise."""
  if _traced(x1, x2, params, kwargs):
    return report
  wrapper = getattr(ntk, "_planner", None)
  cache = wrapper.cache if isinstance(wrapper, CachedPlanner) else (
      _default_cache())
  if cache is None:
    return report
  times = cache.measured_times(signature_of(ntk, x1, x2, params, kwargs))
  return report.with_measurements(times) if times else report
