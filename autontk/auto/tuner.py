"""The autotuner: time the planner's candidates on the device, keep the fastest.

:func:`tune` asks the cost-model planner for its candidates (method ×
chunking) ranked by the cost model, then times them with an `optuna`_ study:

* The study is seeded with the cost model's ranking (``enqueue_trial``),
  every method's unchunked plan first, so the most promising candidates
  are timed first; a ``BruteForceSampler`` covers the rest of a small
  space, a TPE sampler a large one.
* Each candidate is compiled (compile time recorded), run for
  ``warmup_s`` to warm up, then timed with ``block_until_ready`` until at
  least ``min_time_s`` of measurements and ``min_repeats`` repeats; the
  score is the median. A
  repeat more than twice the median is re-timed once (a scheduler hiccup is
  not the kernel's fault).
* A candidate whose fastest repeat is already ``stop_ratio`` times slower
  than the best median so far is stopped early (after two repeats, or one
  that is twice as far off).
* A candidate that fails to compile or run (including out of memory) is
  marked infeasible with the reason; the run goes on.
* Candidates within ``confirm_ratio`` of the best are timed again,
  interleaved call by call (each round calls each candidate once, for at
  least ``confirm_time_s``), and the median over rounds decides: a close
  call is not decided by a busy moment of the machine (the study times
  candidates one after the other).
* ``budget_s`` bounds the whole run (the best predicted candidate is always
  timed). The study starts no trial it expects (from the mean trial so
  far) to end past its share of the budget, leaving the confirmation 15 %
  plus ``confirm_time_s`` (at most half), and the fastest
  candidates' compiled runners are kept for it, so it compiles nothing
  again; a tqdm progress bar shows the study.
* The study lives in a journal file per signature
  (``<cache>/tuning/<signature>.journal``): an interrupted run resumes, and
  candidates already timed are not timed again.

The winner and every measurement go to the :class:`~autontk.PlanCache`, so
later processes (and the learned calibration) reuse them.

.. _optuna: https://optuna.org
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autontk import adapters
from autontk._kernel_fn import NtkFn
from autontk._options import Implementation, NtkOptions
from autontk._plan import Plan, plan_to_json
from autontk._types import PyTree
from autontk.auto.planner import (Planner, PlannerOptions, PlanningCall,
                                  is_memory_variant, signature_of)
from autontk.auto.report import CostReport
from autontk.costmodel.estimate import CostEstimate
from autontk.plancache import PlanCache, Signature, shared_cache


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


@dataclasses.dataclass
class Timing:
  """Measured seconds of one candidate."""

  median_s: float
  min_s: float
  repeats: int
  compile_s: float
  stopped_early: bool = False


@dataclasses.dataclass
class TuneResult:
  """What :func:`tune` found.

  Attributes:
    signature: the model signature the result is cached under.
    plan: the fastest feasible plan measured.
    estimates: one :class:`~autontk.costmodel.CostEstimate` per candidate,
      with ``measured_time`` and ``timing`` where it was timed.
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


# Timing -------------------------------------------------------------------------

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
    A :class:`Timing`. Raises whatever compiling or running raises.
  """
  once = runner or _runner(ntk, plan, x1, x2, params, kwargs)
  compile_s = once()  # compile and first run
  warm = _warm_up(once, options.warmup_s)
  if stop_above_s is not None and warm > 2 * stop_above_s:
    # Far slower than the best already: the warm-up run is evidence enough.
    return Timing(median_s=warm, min_s=warm, repeats=1,
                  compile_s=max(compile_s - warm, 0.0), stopped_early=True)
  times, stopped = _repeat(once, options, stop_above_s)
  med = statistics.median(times)
  return Timing(median_s=med, min_s=min(times), repeats=len(times),
                compile_s=max(compile_s - med, 0.0), stopped_early=stopped)


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

  def once() -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(runner(x1, x2, params, **kwargs))
    return time.perf_counter() - t0

  return once


def _warm_up(once: Callable[[], float], seconds: float) -> float:
  """Calls ``once`` until ``seconds`` have passed (at least once); returns
  the last call's time. A program's first calls after its compile run
  slower (allocator, caches, frequency scaling), some for tens of
  milliseconds: timed at once, they would rank it below its peers."""
  spent, last = 0.0, once()
  while spent + last < seconds:
    spent += last
    last = once()
  return last


def _repeat(once, options: TuneOptions,
            stop_above_s: float | None = None) -> tuple[list[float], bool]:
  """Repeats until enough time and repeats; re-times outliers."""
  times: list[float] = []
  while len(times) < options.max_repeats:
    times.append(once())
    # One repeat can be a hiccup: stop on one only when it is far off.
    if stop_above_s is not None and min(times) > stop_above_s * (
        2.0 if len(times) == 1 else 1.0):
      return times, True
    if len(times) >= options.min_repeats and sum(times) >= options.min_time_s:
      break
  if len(times) >= 3:
    med = statistics.median(times)
    times = [once() if t > 2 * med else t for t in times]
  return times, False


def confirm(ntk: NtkFn, plans: Sequence[Plan], x1, x2, params, kwargs,
            options: TuneOptions = TuneOptions(),
            deadline: float | None = None,
            runners: dict[Plan, Callable[[], float]] | None = None
            ) -> dict[Plan, float]:
  """Median seconds per call of each plan, timed interleaved.

  Each round calls every plan once, starting one plan later than the round
  before, so that machine noise (another process, frequency changes) falls
  on all plans alike and none always follows the same one; at least
  ``confirm_rounds`` rounds, more until ``confirm_time_s`` has passed (4×
  that while the two fastest are within 10 % of each other). Past
  ``deadline`` (a ``time.perf_counter()`` value) no new round starts once
  ``confirm_rounds`` are done, or sooner if they would take more than a
  tenth of ``budget_s``. The median over rounds is what a user calling
  the function many times gets.
  ``runners`` (plan -> ``once()``) are reused instead of compiling again.
  """
  plans = list(plans)
  given = runners or {}
  runners = {p: given.get(p) or _runner(ntk, p, x1, x2, params, kwargs)
             for p in plans}
  for once in runners.values():
    once()  # compile (unless given)
    once()  # warm up
  times: dict[Plan, list[float]] = {p: [] for p in plans}
  t0 = time.perf_counter()
  t_end, extended = t0 + options.confirm_time_s, False
  for rounds in range(max(options.max_repeats, 1)):
    now = time.perf_counter()
    if rounds >= options.confirm_rounds and now >= t_end:
      if extended or not options.confirm_time_s or not _close_call(times):
        break
      t_end, extended = t_end + 3 * options.confirm_time_s, True
    if rounds and deadline is not None and now >= deadline and (
        rounds >= options.confirm_rounds or
        (now - t0) / rounds * options.confirm_rounds > 0.1 * options.budget_s):
      # Past the deadline: the minimum rounds still run when they are
      # cheap (a round or two would decide a close call by noise).
      break
    k = rounds % len(plans)
    for p in plans[k:] + plans[:k]:
      times[p].append(runners[p]())
  return {p: statistics.median(ts) for p, ts in times.items()}


def _close_call(times: dict[Plan, list[float]]) -> bool:
  """The two fastest medians are within 10 %: a close call, which needs
  more rounds to be told from noise."""
  meds = sorted(statistics.median(t) for t in times.values() if t)
  return len(meds) >= 2 and meds[1] <= 1.1 * meds[0]


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
  return dataclasses.replace(est, measured_time=t.median_s,
                             timing=dataclasses.asdict(t))


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


# The study ----------------------------------------------------------------------

def tune(f: Any, x1: PyTree, x2: PyTree | None, params: PyTree, *,
         trace_axes: Any = (-1,), diagonal_axes: Any = (),
         vmap_axes: Any = None, wrt: Any = None, groups: Any = None,
         pseudo_axes: Any = None, precision: Any = None,
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
    trace_axes: as in :func:`autontk.ntk_fn`.
    diagonal_axes: as in :func:`autontk.ntk_fn`.
    vmap_axes: as in :func:`autontk.ntk_fn`.
    wrt: as in :func:`autontk.ntk_fn`.
    groups: as in :func:`autontk.ntk_fn`.
    pseudo_axes: as in :func:`autontk.ntk_fn`.
    precision: as in :func:`autontk.ntk_fn`.
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
    **kwargs: keyword arguments of ``f``.

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
  ntk = f if isinstance(f, NtkFn) else NtkFn(
      adapters.apply_fn(f), NtkOptions.make(
          trace_axes, diagonal_axes, vmap_axes, "auto", wrt=wrt,
          groups=groups, pseudo_axes=pseudo_axes, precision=precision))
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
  run = _Study(ntk, (x1, x2, params, kwargs), cands, options, sig, cache)
  run.optimize(t_start)
  ests = run.estimates()
  if time.perf_counter() - t_start < options.budget_s:
    ests = _confirm_close_calls(ntk, ests, (x1, x2, params, kwargs), options,
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


class _Study:
  """One optuna study over the candidates of one signature."""

  def __init__(self, ntk: NtkFn, args: tuple, cands: list[CostEstimate],
               options: TuneOptions, sig: Signature,
               cache: PlanCache | None):
    self.ntk, self.args, self.options = ntk, args, options
    self.keys = [plan_to_json(c.plan) for c in cands]
    self.cands = dict(zip(self.keys, cands))
    self.study = _study(sig, self.keys, cache)
    self.done = _finished(self.study, self.cands)
    todo = [k for k, c in self.cands.items() if c.feasible and
            k not in self.done]
    if options.max_trials is not None:
      todo = todo[:max(options.max_trials - len(self.done), 0)]
    self.todo, self.remaining = todo, set(todo)
    self.timed = 0
    self.bar = _progress(len(todo), options.progress, sig)
    # The fastest candidates' runners stay alive for the confirmation (no
    # second compile).
    self.runners: dict[Plan, Callable[[], float]] = {}

  def optimize(self, t_start: float) -> None:
    if not self.todo:
      return
    for k in self.todo:
      self.study.enqueue_trial({"candidate": k})

    opts = self.options
    # The study leaves the confirmation part of the budget.
    reserve_s = 0.0 if opts.confirm_rounds < 1 else min(
        0.15 * opts.budget_s + opts.confirm_time_s, 0.5 * opts.budget_s)
    started_s = time.perf_counter() - t_start

    def stop_when_done(study, _):
      # Stop before a trial that would not end within the study's share of
      # the budget (a trial takes about as long as the mean so far).
      elapsed = time.perf_counter() - t_start
      next_trial = (elapsed - started_s) / max(self.timed, 1)
      over = elapsed + next_trial > opts.budget_s - reserve_s
      if not self.remaining or (self.timed and over):
        study.stop()

    try:
      self.study.optimize(
          self._objective, n_trials=2 * len(self.keys) + len(self.todo),
          catch=(_Infeasible,), callbacks=[stop_when_done],
          gc_after_trial=False, show_progress_bar=False)
    finally:
      if self.bar is not None:
        self.bar.close()

  def _objective(self, trial) -> float:
    key = trial.suggest_categorical("candidate", self.keys)
    if key not in self.remaining:
      # A stale queued trial of an interrupted run, or the sampler's pick
      # outside this run's shortlist: record nothing for it.
      raise optuna.TrialPruned()
    best = min((e.measured_time for e in self.done.values()
                if e.measured_time is not None), default=None)
    stop = None if best is None else best * self.options.stop_ratio
    x1, x2, params, kwargs = self.args
    plan = self.cands[key].plan
    runner = _runner(self.ntk, plan, x1, x2, params, kwargs)
    result = _measure(self.ntk, self.cands[key], x1, x2, params, kwargs,
                      self.options, stop, runner)
    self.done[key] = result
    self._keep(plan, runner, result)
    self.remaining.discard(key)
    self.timed += 1
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix_str(_postfix(self.done))
    if not result.feasible:
      trial.set_user_attr("reason", result.reason)
      raise _Infeasible(result.reason)
    trial.set_user_attr("timing", dict(result.timing or {}))
    return result.measured_time

  def _keep(self, plan: Plan, runner: Callable[[], float],
            result: CostEstimate) -> None:
    """Keeps the runners of the ``confirm_top`` fastest candidates."""
    if not result.feasible or result.measured_time is None:
      return
    self.runners[plan] = runner
    times = {e.plan: e.measured_time for e in self.done.values()
             if e.plan in self.runners}
    for p in sorted(times, key=times.get)[self.options.confirm_top:]:
      del self.runners[p]

  def estimates(self) -> list[CostEstimate]:
    """Every candidate, measured where timed (now or in an earlier run)."""
    return [self.done.get(k, c) for k, c in self.cands.items()]


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
      timing={**(e.timing or {}), "study_s": e.measured_time,
              "confirmed": True}) if e.plan in best else e for e in ests]


def _study(sig: Signature, keys: list[str], cache: PlanCache | None):
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  # The candidate list is part of the name: a categorical's choices cannot
  # change within a study, and a new library version may offer new plans.
  space = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:12]
  name = f"autontk-{sig.digest}-{space}"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    sampler = (optuna.samplers.BruteForceSampler(seed=0) if len(keys) <= 256
               else optuna.samplers.TPESampler(seed=0))
  storage = None
  if cache is not None:
    try:
      folder = cache.directory / "tuning"
      folder.mkdir(parents=True, exist_ok=True)
      storage = JournalStorage(JournalFileBackend(
          str(folder / f"{sig.digest}.journal")))
    except OSError as e:
      warnings.warn(f"autontk tuner: cannot keep a resumable journal ({e}); "
                    "tuning in memory.", stacklevel=3)
  return optuna.create_study(study_name=name, storage=storage,
                             sampler=sampler, direction="minimize",
                             load_if_exists=True)


def _finished(study, cands: dict[str, CostEstimate]
              ) -> dict[str, CostEstimate]:
  """Results of trials completed in earlier (possibly interrupted) runs."""
  done: dict[str, CostEstimate] = {}
  for t in study.get_trials(deepcopy=False):
    key = t.params.get("candidate")
    if key not in cands:
      continue
    if t.state is TrialState.COMPLETE:
      done[key] = dataclasses.replace(
          cands[key], measured_time=t.value,
          timing=dict(t.user_attrs.get("timing", {})))
    elif t.state is TrialState.FAIL and "reason" in t.user_attrs:
      done[key] = dataclasses.replace(cands[key], feasible=False,
                                      reason=t.user_attrs["reason"])
  return done


class _Infeasible(Exception):
  """A candidate failed to compile or run; its trial is marked failed."""


def _progress(total: int, enabled: bool, sig: Signature):
  if not enabled or total == 0:
    return None
  return tqdm(total=total, desc=f"tuning {sig.short}", unit="plan",
              leave=False)


def _postfix(done: dict[str, CostEstimate]) -> str:
  best = [e.measured_time for e in done.values() if e.measured_time]
  return f"best {format_seconds(min(best))}" if best else ""


def format_seconds(v: float | None) -> str:
  """``"1.234 ms"`` style (``"-"`` for ``None``)."""
  if v is None:
    return "-"
  if v >= 1:
    return f"{v:.3f} s"
  if v >= 1e-3:
    return f"{v * 1e3:.3f} ms"
  return f"{v * 1e6:.1f} us"
