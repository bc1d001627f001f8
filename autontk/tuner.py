"""The autotuner: time the planner's candidates on the device, keep the fastest.

:func:`tune` asks the planner for its candidates (method × chunking) ranked
by the cost model, then times them with an `optuna`_ study:

* The study is seeded with the cost model's ranking (``enqueue_trial``),
  every method's unchunked plan first, so the most promising candidates
  are timed first; a ``BruteForceSampler``
  covers the rest of a small space, a TPE sampler a large one.
* Each candidate is compiled (compile time recorded), run once to warm up,
  then timed with ``block_until_ready`` until at least ``min_time_s`` of
  measurements and ``min_repeats`` repeats; the score is the median. A
  repeat more than twice the median is re-timed once (a scheduler hiccup is
  not the kernel's fault).
* A candidate whose fastest repeat is already ``stop_ratio`` times slower
  than the best median so far is stopped early (after two repeats, or one
  that is twice as far off).
* A candidate that fails to compile or run (including out of memory) is
  marked infeasible with the reason; the run goes on.
* Candidates within 1.3× of the best are timed again, interleaved over a
  few rounds, so a close call is not decided by a busy moment of the
  machine (the study times candidates one after the other).
* ``budget_s`` bounds the whole run (the best predicted candidate is always
  timed; the confirmation runs only within the budget); a tqdm progress
  bar shows it.
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
from typing import Any, Sequence

import jax

from autontk._api import NtkFn, ntk_fn
from autontk._plan import Plan
from autontk._types import PyTree
from autontk.cached_planner import signature_of
from autontk.plancache import PlanCache, plan_to_json
from autontk.planner import is_memory_variant
from autontk.signature import Signature


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
    confirm_ratio: after the study, candidates within this factor of the
      best are timed again, interleaved (``confirm_rounds`` rounds), so
      that a close call is not decided by a moment of machine noise.
    confirm_top: at most this many candidates are confirmed.
    confirm_rounds: rounds of interleaved timing (0: no confirmation).
    progress: show a tqdm progress bar.
  """

  budget_s: float = 60.0
  max_trials: int | None = None
  min_time_s: float = 0.05
  min_repeats: int = 3
  max_repeats: int = 1000
  stop_ratio: float = 1.5
  confirm_ratio: float = 1.3
  confirm_top: int = 4
  confirm_rounds: int = 3
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
    if not self.stop_ratio > 1:
      raise ValueError(f"`stop_ratio` must be > 1; got {self.stop_ratio}.")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One plan to time, with what the cost model predicts about it.

  Attributes:
    plan: the plan.
    predicted_s: the cost model's predicted seconds (``None``: unknown).
    features: HLO features for the cache and the calibration (``flops``,
      ``bytes``, ``transcendentals``, ``peak_bytes``, ``n_chunks``...).
    feasible: ``False`` if the planner already ruled it out.
    reason: why it is infeasible.
  """

  plan: Plan
  predicted_s: float | None = None
  features: dict[str, Any] = dataclasses.field(default_factory=dict)
  feasible: bool = True
  reason: str = ""


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
    rows: one dict per candidate: ``plan``, ``predicted_s``, ``measured_s``,
      ``feasible``, ``reason``, ``timing``, ``features``.
    elapsed_s: seconds this call took.
    timed: candidates timed in this call (excluding resumed ones).
  """

  signature: Signature
  plan: Plan
  rows: list[dict[str, Any]]
  elapsed_s: float
  timed: int

  def table(self) -> str:
    """A text table of the candidates, fastest first."""
    lines = [f"signature {self.signature.short}  ({self.elapsed_s:.1f} s, "
             f"{self.timed} timed now)",
             f"{'':2}{'plan':<56} {'predicted':>10} {'measured':>10}  note"]
    rows = sorted(self.rows, key=_row_order)
    for r in rows:
      mark = "*" if r["plan"] == self.plan else " "
      note = r["reason"] if not r["feasible"] else (
          "stopped early" if r.get("timing", {}).get("stopped_early") else "")
      lines.append(f"{mark} {r['plan'].describe()[:56]:<56} "
                   f"{_fmt_s(r.get('predicted_s')):>10} "
                   f"{_fmt_s(r.get('measured_s')):>10}  {note}")
    return "\n".join(lines)


def _row_order(r):
  m = r.get("measured_s")
  return (not r["feasible"], m is None, m or 0.0, r.get("predicted_s") or 0.0)


def _fmt_s(v: float | None) -> str:
  if v is None:
    return "-"
  if v >= 1:
    return f"{v:.3f} s"
  if v >= 1e-3:
    return f"{v * 1e3:.3f} ms"
  return f"{v * 1e6:.1f} us"


# Timing -----------------------------------------------------------------------

def time_plan(ntk: NtkFn, plan: Plan, x1: PyTree, x2: PyTree | None,
              params: PyTree, kwargs: dict[str, Any],
              options: TuneOptions = TuneOptions(),
              stop_above_s: float | None = None) -> Timing:
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

  Returns:
    A :class:`Timing`. Raises whatever compiling or running raises.
  """
  once = _runner(ntk, plan, x1, x2, params, kwargs)
  compile_s = once()  # compile and first run
  warm = once()  # warm-up: caches, allocator, frequency scaling
  if stop_above_s is not None and warm > 2 * stop_above_s:
    # Far slower than the best already: the warm-up run is evidence enough.
    return Timing(median_s=warm, min_s=warm, repeats=1,
                  compile_s=max(compile_s - warm, 0.0), stopped_early=True)
  times, stopped = _repeat(once, options, stop_above_s)
  med = statistics.median(times)
  return Timing(median_s=med, min_s=min(times), repeats=len(times),
                compile_s=max(compile_s - med, 0.0), stopped_early=stopped)


def _runner(ntk: NtkFn, plan: Plan, x1, x2, params, kwargs):
  """``once() -> seconds`` of one call of ``plan`` on a private NtkFn."""
  runner = NtkFn(ntk.f, ntk.options, jit=True)

  def once() -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(runner.execute(plan, x1, x2, params, **kwargs))
    return time.perf_counter() - t0

  return once


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
            options: TuneOptions = TuneOptions()) -> dict[Plan, float]:
  """Best median per plan over interleaved rounds of timing.

  Timing candidates one after the other lets a busy moment of the machine
  decide a close call; interleaving them exposes all to the same noise.
  """
  runners = {p: _runner(ntk, p, x1, x2, params, kwargs) for p in plans}
  for once in runners.values():
    once()  # compile
    once()  # warm up
  best = {p: math.inf for p in plans}
  for r in range(options.confirm_rounds):
    order = list(plans)[r % len(plans):] + list(plans)[:r % len(plans)]
    for p in order:
      times, _ = _repeat(runners[p], options)
      best[p] = min(best[p], statistics.median(times))
  return best


# Candidates -------------------------------------------------------------------

def default_candidates(ntk: NtkFn, x1: PyTree, x2: PyTree | None,
                       params: PyTree, kwargs: dict[str, Any],
                       predictor: Any = None) -> list[Candidate]:
  """The planner's candidates with the cost model's estimates.

  Every candidate (chunked ones included) is estimated from its lowered HLO
  (no compile), with ``predictor`` if given, else the planner's (the
  calibrated roofline by default).
  """
  from autontk import _auto
  from autontk.planner import Planner
  planner = _auto._planner_of(ntk)  # noqa: SLF001
  if predictor is not None:
    planner = Planner(dataclasses.replace(planner.options,
                                          predictor=predictor))
  report = planner.plan_report(ntk, x1, x2, params, kwargs, full=True)
  return [candidate_from_estimate(e) for e in report.estimates]


def estimate_features(est: Any) -> dict[str, Any]:
  """The cache's ``features`` of a cost-model ``CostEstimate``."""
  return {"flops": est.flops, "bytes": est.bytes_accessed,
          "transcendentals": est.transcendentals,
          "peak_bytes": est.peak_memory, "n_chunks": est.blocks,
          "calls": est.calls, "loop_iterations": est.loop_iterations,
          "analysis_s": est.analysis_time, "source": est.source}


def candidate_from_estimate(est: Any) -> Candidate:
  """A :class:`Candidate` from a cost-model ``CostEstimate``."""
  return Candidate(est.plan, est.predicted_time, estimate_features(est),
                   bool(est.feasible), est.reason or "")


def _as_candidate(c: Any) -> Candidate:
  if isinstance(c, Candidate):
    return c
  if isinstance(c, Plan):
    return Candidate(c)
  plan = getattr(c, "plan", None)
  if not isinstance(plan, Plan):
    raise TypeError(f"`candidates` items must be Plans or have a `.plan`; "
                    f"got {type(c).__name__}.")
  return Candidate(plan, getattr(c, "predicted_s", None),
                   dict(getattr(c, "features", {}) or {}),
                   bool(getattr(c, "feasible", True)),
                   str(getattr(c, "reason", "") or ""))


# The study --------------------------------------------------------------------

def tune(f: Any, x1: PyTree, x2: PyTree | None, params: PyTree, *,
         trace_axes: Any = (-1,), diagonal_axes: Any = (),
         vmap_axes: Any = None, options: TuneOptions | None = None,
         budget_s: float | None = None, max_trials: int | None = None,
         progress: bool | None = None, cache: PlanCache | None | bool = None,
         candidates: Sequence[Any] | None = None, predictor: Any = None,
         **kwargs: Any) -> TuneResult:
  """Times the candidate plans of one NTK call and caches the fastest.

  Args:
    f: the network ``f(params, x, **kwargs)``, or an :class:`NtkFn` (whose
      trace/diagonal/vmap axes are then used).
    x1: first batch of inputs, e.g. shape ``(N1, ...)``.
    x2: second batch, or ``None`` for ``x2 = x1``.
    params: the parameters.
    trace_axes: as in :func:`autontk.ntk_fn`.
    diagonal_axes: as in :func:`autontk.ntk_fn`.
    vmap_axes: as in :func:`autontk.ntk_fn`.
    options: a :class:`TuneOptions`; ``budget_s``, ``max_trials`` and
      ``progress`` override its fields.
    budget_s: wall-clock budget in seconds (default 60).
    max_trials: time at most this many candidates.
    progress: show a progress bar (default on).
    cache: where to store the result; default ``PlanCache()``; ``False``
      for no cache (and no resumable journal).
    candidates: plans (or :class:`Candidate` s) to time, best predicted
      first; default: the planner's.
    predictor: a time predictor handed to the planner to rank candidates.
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
  options = options or TuneOptions()
  overrides = {k: v for k, v in dict(budget_s=budget_s, max_trials=max_trials,
                                     progress=progress).items()
               if v is not None}
  options = dataclasses.replace(options, **overrides)
  ntk = f if isinstance(f, NtkFn) else ntk_fn(
      f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
      vmap_axes=vmap_axes, implementation="jacobian_contraction")
  ntk.problem(x1, x2, params, **kwargs)  # validate: clear errors first
  sig = signature_of(ntk, x1, x2, params, kwargs)
  if cache is None:
    cache = PlanCache()
  elif cache is False:
    cache = None

  if candidates is None:
    candidates = default_candidates(ntk, x1, x2, params, kwargs, predictor)
  cands = [_as_candidate(c) for c in candidates]
  if not cands:
    raise ValueError("`candidates` is empty: nothing to tune.")
  # Every method's whole (unchunked) plan first, then the memory-saving
  # variants; best predicted first within each group, candidates without a
  # prediction keep their order. The cost model's ranking *across* methods
  # is its least certain part, and a variant is rarely faster than its
  # method's whole plan when that fits the memory budget, so a short budget
  # is best spent timing one plan per method.
  order = sorted(range(len(cands)), key=lambda i: (
      not cands[i].feasible, is_memory_variant(cands[i].plan),
      cands[i].predicted_s is None, cands[i].predicted_s or 0.0, i))
  cands = [cands[i] for i in order]
  keys = [plan_to_json(c.plan) for c in cands]
  by_key = dict(zip(keys, cands))

  study = _study(sig, keys, cache)
  done = _finished(study)
  todo = [k for k, c in zip(keys, cands) if c.feasible and k not in done]
  if options.max_trials is not None:
    todo = todo[:max(options.max_trials - len(done), 0)]
  for k in todo:
    study.enqueue_trial({"candidate": k})

  import optuna
  bar = _progress(len(todo), options.progress, sig)
  remaining = set(todo)
  counter = {"timed": 0}

  def objective(trial) -> float:
    key = trial.suggest_categorical("candidate", keys)
    if key not in remaining:
      # A stale queued trial of an interrupted run, or the sampler's pick
      # outside this run's shortlist: record nothing for it.
      raise optuna.TrialPruned()
    best = min((v["measured_s"] for v in done.values()
                if v["measured_s"] is not None), default=None)
    result = _measure(ntk, by_key[key], x1, x2, params, kwargs, options,
                      None if best is None else best * options.stop_ratio)
    done[key] = result
    remaining.discard(key)
    counter["timed"] += 1
    if bar is not None:
      bar.update(1)
      bar.set_postfix_str(_postfix(done))
    if not result["feasible"]:
      trial.set_user_attr("reason", result["reason"])
      raise _Infeasible(result["reason"])
    trial.set_user_attr("timing", result["timing"])
    return result["measured_s"]

  def stop_when_done(study, _):
    over = time.perf_counter() - t_start > options.budget_s
    if not remaining or (counter["timed"] and over):
      study.stop()

  try:
    if todo:
      study.optimize(objective, n_trials=2 * len(keys) + len(todo),
                     catch=(_Infeasible,), callbacks=[stop_when_done],
                     gc_after_trial=False, show_progress_bar=False)
  finally:
    if bar is not None:
      bar.close()
  timed = counter["timed"]

  rows = []
  for k, c in zip(keys, cands):
    r = done.get(k)
    rows.append({
        "plan": c.plan, "predicted_s": c.predicted_s,
        "measured_s": None if r is None else r["measured_s"],
        "feasible": c.feasible and (r is None or r["feasible"]),
        "reason": c.reason or ("" if r is None else r["reason"]),
        "timing": {} if r is None else r["timing"],
        "features": {**c.features, **({} if r is None else
                                      {"compile_s": r["timing"].get(
                                          "compile_s")})},
    })
  if time.perf_counter() - t_start < options.budget_s:
    _confirm_close_calls(ntk, rows, x1, x2, params, kwargs, options)
  measured = [r for r in rows if r["measured_s"] is not None and r["feasible"]]
  if not measured:
    reasons = "; ".join(f"{r['plan'].describe()}: {r['reason']}"
                        for r in rows if r["reason"])
    raise RuntimeError(f"No candidate plan could be run ({reasons}).")
  best_row = min(measured, key=lambda r: r["measured_s"])
  elapsed = time.perf_counter() - t_start
  if cache is not None:
    cache.store(sig, best_row["plan"], source="tuned", candidates=rows,
                planning_s=elapsed)
  return TuneResult(signature=sig, plan=best_row["plan"], rows=rows,
                    elapsed_s=elapsed, timed=timed)


def _confirm_close_calls(ntk, rows, x1, x2, params, kwargs,
                         options: TuneOptions) -> None:
  """Re-times, interleaved, the candidates close to the best (in place)."""
  measured = sorted((r for r in rows if r["measured_s"] is not None and
                     r["feasible"]), key=lambda r: r["measured_s"])
  if options.confirm_rounds < 1 or len(measured) < 2:
    return
  cutoff = measured[0]["measured_s"] * options.confirm_ratio
  close = [r for r in measured if r["measured_s"] <= cutoff]
  close = close[:options.confirm_top]
  if len(close) < 2:
    return
  try:
    best = confirm(ntk, [r["plan"] for r in close], x1, x2, params, kwargs,
                   options)
  except Exception:  # noqa: BLE001 - they ran before; keep the study's times
    return
  for r in close:
    r["timing"] = {**r["timing"], "study_s": r["measured_s"],
                   "confirmed": True}
    r["measured_s"] = best[r["plan"]]


def _measure(ntk, cand: Candidate, x1, x2, params, kwargs,
             options: TuneOptions, stop_above_s: float | None
             ) -> dict[str, Any]:
  try:
    t = time_plan(ntk, cand.plan, x1, x2, params, kwargs, options,
                  stop_above_s)
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as e:  # noqa: BLE001 - compile errors, OOM: infeasible
    return {"measured_s": None, "feasible": False,
            "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                      if str(e) else type(e).__name__,
            "timing": {}}
  return {"measured_s": t.median_s, "feasible": True, "reason": "",
          "timing": dataclasses.asdict(t)}


def _study(sig: Signature, keys: list[str], cache: PlanCache | None):
  import optuna
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
      from optuna.storages import JournalStorage
      from optuna.storages.journal import JournalFileBackend
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


def _finished(study) -> dict[str, dict[str, Any]]:
  """Results of trials completed in earlier (possibly interrupted) runs."""
  from optuna.trial import TrialState
  done: dict[str, dict[str, Any]] = {}
  for t in study.get_trials(deepcopy=False):
    key = t.params.get("candidate")
    if key is None:
      continue
    if t.state is TrialState.COMPLETE:
      done[key] = {"measured_s": t.value, "feasible": True, "reason": "",
                   "timing": dict(t.user_attrs.get("timing", {}))}
    elif t.state is TrialState.FAIL and "reason" in t.user_attrs:
      done[key] = {"measured_s": None, "feasible": False,
                   "reason": t.user_attrs["reason"], "timing": {}}
  return done


class _Infeasible(Exception):
  """A candidate failed to compile or run; its trial is marked failed."""


def _progress(total: int, enabled: bool, sig: Signature):
  if not enabled or total == 0:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=f"tuning {sig.short}", unit="plan",
              leave=False)


def _postfix(done: dict[str, dict[str, Any]]) -> str:
  best = [v["measured_s"] for v in done.values() if v["measured_s"]]
  return f"best {_fmt_s(min(best))}" if best else ""


def regret(rows: Sequence[dict[str, Any]], plan: Plan) -> float:
  """Measured time of ``plan`` over the best measured time in ``rows``."""
  times = {r["plan"]: r["measured_s"] for r in rows
           if r.get("measured_s") is not None}
  if plan not in times:
    return math.nan
  return times[plan] / min(times.values())
