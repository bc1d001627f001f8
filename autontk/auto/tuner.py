"""The autotuner: time the planner's candidates on the device, keep the fastest.

:func:`tune` asks the cost-model planner for its candidates (method ×
chunking) ranked by the cost model, then times them:

* Every method's unchunked plan first, then the memory-saving variants,
  best predicted first within each group (:func:`default_candidates`, and
  the ranking below): the cost model's ranking *across* methods is its
  least certain part, so a short budget times one plan per method.
* The candidates are queued in that order in a study
  (:mod:`~autontk.auto.study`: a resumable queue kept by optuna in a
  journal per signature, so an interrupted run resumes and candidates
  already timed are not timed again).
* Each candidate is timed by the protocol of :mod:`~autontk.auto.timing`
  (compile, ``warmup_s`` of warm-up, at least ``min_time_s`` and
  ``min_repeats`` repeats, the median), through the very path a user's call
  takes. A candidate whose fastest repeat is already ``stop_ratio`` times
  slower than the best median so far is stopped early; one that fails to
  compile or run (including out of memory) is marked infeasible with the
  reason, and the run goes on.
* Candidates within ``confirm_ratio`` of the best are timed again,
  interleaved call by call (:func:`~autontk.auto.timing.time_interleaved`),
  and the median over rounds decides: a close call is not decided by a busy
  moment of the machine. Their compiled runners are kept from the study, so
  nothing is compiled again.
* ``budget_s`` bounds the whole run (the best predicted candidate is always
  timed): a quarter of it at most goes to estimating the candidates, and the
  study leaves the confirmation 15 % plus ``confirm_time_s`` (at most half).

The winner and every measurement go to the :class:`~autontk.PlanCache`, so
later processes (and the learned calibration) reuse them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax

from autontk import adapters
from autontk._kernel_fn import NtkFn
from autontk._options import Implementation, NtkOptions, split_ntk_options
from autontk._plan import Plan
from autontk._types import PyTree
from autontk.auto import timing
from autontk.auto.planner import (Planner, PlannerOptions, PlanningCall,
                                  is_memory_variant, signature_of)
from autontk.auto.report import CostReport
from autontk.auto.study import Measure, Study, StudyLimits
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.measurement import Timing
from autontk.plancache import PlanCache, Signature, compilation, shared_cache


@dataclasses.dataclass(frozen=True)
class TuneOptions:
  """How hard :func:`tune` works.

  Attributes:
    budget_s: wall-clock budget of the whole run, compiles included.
    max_trials: at most this many candidates are timed (``None``: all).
    min_time_s: time each candidate for at least this long in total.
    min_repeats: and at least this many repeats.
    max_repeats: and at most this many.
    stop_ratio: stop timing a candidate whose fastest repeat is this many
      times slower than the best median so far.
    warmup_s: after its compile, call each candidate for this long before
      timing it (at least once).
    confirm_ratio: after the study, candidates within this factor of the
      best are timed again, interleaved (each round calls each once), so
      that a close call is not decided by a moment of machine noise; the
      median over rounds decides.
    confirm_top: at most this many candidates are confirmed.
    confirm_rounds: at least this many rounds of interleaved timing (0: no
      confirmation).
    confirm_time_s: and more rounds until this long has passed (within
      ``budget_s``).
    progress: show a tqdm progress bar.
  """

  budget_s: float = 60.0
  max_trials: int | None = None
  min_time_s: float = 0.05
  min_repeats: int = 3
  max_repeats: int = 1000
  stop_ratio: float = 1.5
  warmup_s: float = 0.05
  confirm_ratio: float = 1.5
  confirm_top: int = 4
  confirm_rounds: int = 9
  confirm_time_s: float = 0.5
  progress: bool = True

  def __post_init__(self):
    if not self.budget_s > 0:
      raise ValueError(f"`budget_s` must be positive; got {self.budget_s}.")
    if self.max_trials is not None and self.max_trials < 1:
      raise ValueError(f"`max_trials` must be at least 1; got "
                       f"{self.max_trials}.")
    if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
      raise ValueError("Need 1 <= `min_repeats` <= `max_repeats`; got "
                       f"{self.min_repeats} and {self.max_repeats}.")
    if self.warmup_s < 0:
      raise ValueError(f"`warmup_s` must be >= 0; got {self.warmup_s}.")
    if self.confirm_time_s < 0:
      raise ValueError(f"`confirm_time_s` must be >= 0; got "
                       f"{self.confirm_time_s}.")
    if not self.stop_ratio > 1:
      raise ValueError(f"`stop_ratio` must be > 1; got {self.stop_ratio}.")

  def timing_policy(self) -> timing.TimingPolicy:
    """The timing protocol's share of these options."""
    return timing.TimingPolicy(
        warmup_s=self.warmup_s, min_time_s=self.min_time_s,
        min_repeats=self.min_repeats, max_repeats=self.max_repeats,
        rounds=self.confirm_rounds, round_time_s=self.confirm_time_s)


@dataclasses.dataclass
class TuneResult:
  """What :func:`tune` found.

  Attributes:
    signature: the model signature the result is cached under.
    plan: the fastest feasible plan measured.
    estimates: one :class:`~autontk.costmodel.CostEstimate` per candidate,
      with ``measured_time`` and ``timing`` (a
      :class:`~autontk.costmodel.measurement.Timing`) where it was timed.
    elapsed_s: seconds this call took.
    timed: candidates timed in this call (excluding resumed ones).
  """

  signature: Signature
  plan: Plan
  estimates: list[CostEstimate]
  elapsed_s: float
  timed: int

  def report(self) -> CostReport:
    """The candidates as a :class:`~autontk.CostReport`."""
    return CostReport(
        estimates=tuple(self.estimates), chosen=self.plan,
        planning_time=self.elapsed_s,
        device=str(jax.devices()[0].device_kind),
        predictor="measured on this device",
        call=f"signature {self.signature.short} ({self.timed} timed now)")

  def table(self) -> str:
    """The report's text table."""
    return str(self.report())

  def regret(self, plan: Plan) -> float:
    """Measured time of ``plan`` over the best measured time."""
    times = {e.plan: e.measured_time for e in self.estimates
             if e.measured_time is not None}
    if plan not in times:
      return math.nan
    return times[plan] / min(times.values())


# Timing a plan ---------------------------------------------------------------

def time_plan(ntk: NtkFn, plan: Plan, x1: PyTree, x2: PyTree | None,
              params: PyTree, kwargs: dict[str, Any],
              options: TuneOptions = TuneOptions(),
              stop_above_s: float | None = None,
              runner: Callable[[], float] | None = None) -> Timing:
  """Times ``plan`` on the default device (compile, warm-up, median).

  Args:
    ntk: the NTK function (its ``f`` and options are used; its executable
      cache is not touched, so timing many plans does not keep them alive).
    plan: the plan to time.
    x1: first batch of inputs.
    x2: second batch, or ``None``.
    params: the parameters.
    kwargs: ``f``'s keyword arguments.
    options: repeats and minimum time.
    stop_above_s: stop once the fastest repeat exceeds this.
    runner: the ``once()`` of :func:`_runner` to time (default: a new one),
      for a caller that keeps it to time the plan again.

  Returns:
    A :class:`~autontk.costmodel.measurement.Timing`
    (:func:`~autontk.auto.timing.time_one`). Raises whatever compiling or
    running raises.
  """
  once = runner or _runner(ntk, plan, x1, x2, params, kwargs)
  return timing.time_one(once, options.timing_policy(), stop_above_s)


class _FixedPlan:
  """A planner that answers one plan: a candidate timed through the very
  path a user's call takes (the per-call fast path included), so a plan
  whose calls cost more Python work (a host-loop chunking) pays for it."""

  def __init__(self, plan: Plan):
    self._plan = plan

  def plan(self, ntk, x1, x2, params, kwargs) -> Plan:
    return self._plan

  def report(self, ntk, x1, x2, params, kwargs) -> Any:
    raise NotImplementedError("a candidate being timed has no report")


def _runner(ntk: NtkFn, plan: Plan, x1, x2, params,
            kwargs) -> Callable[[], float]:
  """``once() -> seconds`` of one call ``ntk(x1, x2, params, **kwargs)``
  running ``plan``, on a private NtkFn (its programs die with it)."""
  runner = NtkFn(ntk.f, dataclasses.replace(
      ntk.options, implementation=Implementation.AUTO), jit=True,
      planner=_FixedPlan(plan))
  return timing.seconds_of(lambda: runner(x1, x2, params, **kwargs))


def confirm(ntk: NtkFn, plans: Sequence[Plan], x1, x2, params, kwargs,
            options: TuneOptions = TuneOptions(),
            deadline: float | None = None,
            runners: dict[Plan, Callable[[], float]] | None = None
            ) -> dict[Plan, float]:
  """Median seconds per call of each plan, timed interleaved
  (:func:`~autontk.auto.timing.time_interleaved` with ``confirm_rounds``
  rounds, for at least ``confirm_time_s``; ``deadline`` a
  ``time.perf_counter()`` value within ``budget_s``).

  ``runners`` (plan -> ``once()``) are reused instead of compiling again.
  """
  given = runners or {}
  onces = {p: given.get(p) or _runner(ntk, p, x1, x2, params, kwargs)
           for p in plans}
  timings = timing.time_interleaved(onces, options.timing_policy(),
                                    deadline=deadline,
                                    budget_s=options.budget_s)
  return {p: t.median_s for p, t in timings.items()}


def _measure(ntk, est: CostEstimate, x1, x2, params, kwargs,
             options: TuneOptions, stop_above_s: float | None,
             runner: Callable[[], float] | None = None) -> CostEstimate:
  """``est`` with its measured time, or infeasible with the error."""
  try:
    t = time_plan(ntk, est.plan, x1, x2, params, kwargs, options,
                  stop_above_s, runner=runner)
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as e:  # noqa: BLE001 - compile errors, OOM: infeasible
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return dataclasses.replace(
        est, feasible=False, measured_time=None,
        reason=f"{type(e).__name__}: {first}" if first else type(e).__name__)
  return dataclasses.replace(est, measured_time=t.median_s, timing=t)


def _measurer(ntk: NtkFn, args: tuple, options: TuneOptions) -> Measure:
  """The study's ``measure``: a candidate timed on a runner of its own,
  which the study may keep for the confirmation."""
  x1, x2, params, kwargs = args

  def measure(est: CostEstimate, stop_above_s: float | None):
    runner = _runner(ntk, est.plan, x1, x2, params, kwargs)
    return _measure(ntk, est, x1, x2, params, kwargs, options, stop_above_s,
                    runner), runner

  return measure


# Candidates ---------------------------------------------------------------------

def default_candidates(ntk: NtkFn, x1: PyTree, x2: PyTree | None,
                       params: PyTree, kwargs: dict[str, Any],
                       planner: Planner,
                       deadline: float | None = None) -> list[CostEstimate]:
  """The planner's candidates with the cost model's estimates.

  Each is estimated from its lowered HLO (no compile: the tuner compiles
  what it times). Every method's whole plan is estimated; the memory
  variants too, unless a whole plan fits and ``deadline`` (a
  ``time.perf_counter()`` value) has passed: those are listed unestimated
  (the tuner times them last, in the planner's order), so that a short
  budget goes to timing rather than to estimating what is rarely faster.
  """
  call = PlanningCall(ntk, x1, x2, params, kwargs)
  budget = planner.budget()
  plans = planner.candidates(call)
  ests = {p: planner.estimate(p, call, budget=budget) for p in plans
          if not is_memory_variant(p, call.problem)}
  fits = any(e.feasible for e in ests.values())
  for p in plans:
    if p in ests:
      continue
    if fits and deadline is not None and time.perf_counter() >= deadline:
      ests[p] = CostEstimate(p, source="skipped",
                             reason="not estimated within the tuning budget")
    else:
      ests[p] = planner.estimate(p, call, budget=budget)
  return [ests[p] for p in plans]


def _as_estimate(c: Any) -> CostEstimate:
  if isinstance(c, CostEstimate):
    return c
  if isinstance(c, Plan):
    return CostEstimate(c, source="skipped")
  raise TypeError(f"`candidates` items must be Plans or CostEstimates; got "
                  f"{type(c).__name__}.")


def _ranked(cands: list[CostEstimate], problem: Any) -> list[CostEstimate]:
  """Every method's whole (unchunked) plan first, then the memory-saving
  variants; best predicted first within each group, candidates without a
  prediction keep their order. The cost model's ranking *across* methods
  is its least certain part, and a variant is rarely faster than its
  method's whole plan when that fits the memory budget, so a short budget
  is best spent timing one plan per method."""
  order = sorted(range(len(cands)), key=lambda i: (
      not cands[i].feasible, is_memory_variant(cands[i].plan, problem),
      cands[i].predicted_time is None, cands[i].predicted_time or 0.0, i))
  return [cands[i] for i in order]


# Tuning ----------------------------------------------------------------------

def tune(f: Any, x1: PyTree, x2: PyTree | None, params: PyTree, *,
         options: TuneOptions | None = None,
         budget_s: float | None = None, max_trials: int | None = None,
         progress: bool | None = None, cache: PlanCache | None | bool = None,
         candidates: Sequence[Any] | None = None,
         planner: Planner | None = None, predictor: Any = None,
         **kwargs: Any) -> TuneResult:
  """Times the candidate plans of one NTK call and caches the fastest.

  Args:
    f: the network ``f(params, x, **kwargs)`` (or a model object, see
      :mod:`autontk.adapters`), or an :class:`NtkFn` (whose options and
      planner are then used).
    x1: first batch of inputs, e.g. shape ``(N1, ...)``.
    x2: second batch, or ``None`` for ``x2 = x1``.
    params: the parameters.
    options: a :class:`TuneOptions`; ``budget_s``, ``max_trials`` and
      ``progress`` override its fields.
    budget_s: wall-clock budget in seconds (default 60).
    max_trials: time at most this many candidates.
    progress: show a progress bar (default on).
    cache: where to store the result; default the shared
      :class:`PlanCache`; ``False`` for no cache (and no resumable journal).
    candidates: plans (or :class:`~autontk.costmodel.CostEstimate` s) to
      time, best predicted first; default: the planner's.
    planner: the cost-model planner ranking the candidates (default: the
      planner of ``f`` when it is an NtkFn from ``ntk_fn``, else a new one).
    predictor: a time predictor for that planner instead of its own.
    **kwargs: the NTK options of :func:`autontk.ntk_fn` by name
      (``trace_axes``, ``diagonal_axes``, ``vmap_axes``, ``wrt``,
      ``groups``, ``pseudo_axes``, ``precision``; ignored when ``f`` is an
      NtkFn, which has its own), and the keyword arguments of ``f``.

  Returns:
    A :class:`TuneResult`; ``result.plan`` is the fastest plan measured.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> r = autontk.tune(f, jnp.ones((4, 3)), None, jnp.ones((3, 2)),
  ...                  cache=False, progress=False, budget_s=20)
  >>> r.plan.implementation in autontk.Implementation
  True
  """
  t_start = time.perf_counter()
  options = _merged(options, budget_s=budget_s, max_trials=max_trials,
                    progress=progress)
  ntk_options, kwargs = split_ntk_options(kwargs)
  ntk = f if isinstance(f, NtkFn) else NtkFn(
      adapters.apply_fn(f), NtkOptions.of(**ntk_options))
  problem = ntk.problem(x1, x2, params, **kwargs)  # clear errors first
  planner = _planner_for(ntk, planner, predictor)
  sig = signature_of(ntk, x1, x2, params, kwargs, planner.options)
  cache = shared_cache() if cache is None else (cache or None)
  if candidates is None:  # a quarter of the budget to estimate them
    candidates = default_candidates(ntk, x1, x2, params, kwargs, planner,
                                    t_start + 0.25 * options.budget_s)
  cands = _ranked([_as_estimate(c) for c in candidates], problem)
  if not cands:
    raise ValueError("`candidates` is empty: nothing to tune.")
  if cache is not None:
    compilation.use_beside(cache)
  args = (x1, x2, params, kwargs)
  run = Study(cands, sig, cache, _measurer(ntk, args, options), StudyLimits(
      options.max_trials, options.stop_ratio, options.confirm_top,
      options.progress))
  run.optimize(t_start, options.budget_s, _confirmation_reserve(options))
  ests = run.estimates()
  if time.perf_counter() - t_start < options.budget_s:
    ests = _confirm_close_calls(ntk, ests, args, options,
                                t_start + options.budget_s, run.runners)
  best = _fastest(ests)
  elapsed = time.perf_counter() - t_start
  if cache is not None:
    cache.store(sig, best.plan, source="tuned", candidates=ests,
                planning_s=elapsed)
  return TuneResult(signature=sig, plan=best.plan, estimates=ests,
                    elapsed_s=elapsed, timed=run.timed)


def _merged(options: TuneOptions | None, **fields: Any) -> TuneOptions:
  """``options`` (default: the defaults) with the fields given (not None)."""
  return dataclasses.replace(options or TuneOptions(), **{
      k: v for k, v in fields.items() if v is not None})


def _planner_for(ntk: NtkFn, planner: Planner | None,
                 predictor: Any) -> Planner:
  if planner is None:
    planner = getattr(ntk.planner, "cost_model", None) or Planner(
        PlannerOptions())
  if predictor is not None:
    planner = Planner(dataclasses.replace(planner.options,
                                          predictor=predictor))
  return planner


def _fastest(ests: Sequence[CostEstimate]) -> CostEstimate:
  measured = [e for e in ests if e.measured_time is not None and e.feasible]
  if not measured:
    reasons = "; ".join(f"{e.plan.describe()}: {e.reason}"
                        for e in ests if e.reason)
    raise RuntimeError(f"No candidate plan could be run ({reasons}).")
  return min(measured, key=lambda e: e.measured_time)


def _confirmation_reserve(options: TuneOptions) -> float:
  """Seconds of the budget the study leaves the confirmation."""
  if options.confirm_rounds < 1:
    return 0.0
  return min(0.15 * options.budget_s + options.confirm_time_s,
             0.5 * options.budget_s)


def _confirm_close_calls(ntk, ests: list[CostEstimate], args: tuple,
                         options: TuneOptions, deadline: float,
                         runners: dict[Plan, Callable[[], float]]
                         ) -> list[CostEstimate]:
  """Re-times, interleaved, the candidates close to the best."""
  measured = sorted((e for e in ests if e.measured_time is not None and
                     e.feasible), key=lambda e: e.measured_time)
  if options.confirm_rounds < 1 or len(measured) < 2:
    return ests
  cutoff = measured[0].measured_time * options.confirm_ratio
  close = [e.plan for e in measured
           if e.measured_time <= cutoff][:options.confirm_top]
  if len(close) < 2:
    return ests
  try:
    best = confirm(ntk, close, *args, options, deadline=deadline,
                   runners=runners)
  except Exception:  # noqa: BLE001 - they ran before; keep the study's times
    return ests
  return [dataclasses.replace(
      e, measured_time=best[e.plan],
      timing=dataclasses.replace(_timing_of(e), confirmed_s=best[e.plan]))
      if e.plan in best else e for e in ests]


def _timing_of(e: CostEstimate) -> Timing:
  """``e``'s timing (a measured time of a journal without one: its own)."""
  if e.timing is not None:
    return e.timing
  return Timing(median_s=e.measured_time, min_s=e.measured_time, repeats=0,
                compile_s=0.0)
