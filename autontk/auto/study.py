"""The tuner's study: a resumable queue of candidates, kept by optuna.

Optuna here does not search: the candidates are few and known, and the
cost model has ranked them. The study is a queue: every candidate to time
is enqueued as a trial (``enqueue_trial``) in the ranked order, and each
trial times the one it is given. What optuna adds is the journal: the study
lives in a file per signature (``<cache>/tuning/<signature>.journal``), so
an interrupted run resumes, and candidates already timed (or found
infeasible) are not timed again. The one search-like piece is the sampler
behind the queue (brute force over a small space, TPE over a large one),
which picks a trial only when the queue has run dry and whose picks outside
this run's shortlist are pruned.

The study decides *when to stop* (the budget, ``max_trials``, a candidate
far slower than the best so far); *how* a candidate is timed is the
``measure`` function it is handed (:mod:`~autontk.auto.tuner`), and
:mod:`~autontk.auto.timing` the protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from typing import Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from autontk._plan import Plan, plan_to_json
from autontk.auto.timing import format_seconds
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.measurement import Timing
from autontk.plancache import PlanCache, Signature

Runner = Callable[[], float]
"""``once() -> seconds`` of one call running a candidate."""

Measure = Callable[[CostEstimate, float | None],
                   tuple[CostEstimate, Runner | None]]
"""``measure(candidate, stop_above_s) -> (measured, runner)``: the candidate
with its measured time (or infeasible with the reason), and the runner that
timed it, for a later confirmation."""


@dataclasses.dataclass(frozen=True)
class StudyLimits:
  """When the study stops timing.

  Attributes:
    max_trials: at most this many candidates timed, counting earlier runs
      (``None``: all).
    stop_ratio: a candidate is stopped once it is this many times slower
      than the best median so far.
    keep_top: the runners of this many fastest candidates are kept.
    progress: show a tqdm progress bar.
  """

  max_trials: int | None = None
  stop_ratio: float = 1.5
  keep_top: int = 4
  progress: bool = True


class Study:
  """One optuna study over the candidates of one signature.

  Args:
    cands: the candidates, best first (the order they are timed in).
    sig: their signature (names the study and its journal).
    cache: where the journal lives (``None``: in memory).
    measure: times one candidate (see :data:`Measure`).
    limits: when to stop.
  """

  def __init__(self, cands: list[CostEstimate], sig: Signature,
               cache: PlanCache | None, measure: Measure,
               limits: StudyLimits = StudyLimits()):
    self.measure, self.limits = measure, limits
    self.keys = [plan_to_json(c.plan) for c in cands]
    self.cands = dict(zip(self.keys, cands))
    self.study = _study(sig, self.keys, cache)
    self.done = _finished(self.study, self.cands)
    todo = [k for k, c in self.cands.items() if c.feasible and
            k not in self.done]
    if limits.max_trials is not None:
      todo = todo[:max(limits.max_trials - len(self.done), 0)]
    self.todo, self.remaining = todo, set(todo)
    self.timed = 0
    self.bar = _progress(len(todo), limits.progress, sig)
    # The fastest candidates' runners stay alive for a confirmation (no
    # second compile).
    self.runners: dict[Plan, Runner] = {}

  def optimize(self, t_start: float, budget_s: float,
               reserve_s: float = 0.0) -> None:
    """Times the queued candidates until done, or until the next one is
    not expected (from the mean trial so far) to end ``reserve_s`` before
    ``budget_s`` after ``t_start`` (a ``time.perf_counter()`` value); the
    first is always timed."""
    if not self.todo:
      return
    for k in self.todo:
      self.study.enqueue_trial({"candidate": k})
    started_s = time.perf_counter() - t_start

    def stop_when_done(study, _):
      elapsed = time.perf_counter() - t_start
      next_trial = (elapsed - started_s) / max(self.timed, 1)
      over = elapsed + next_trial > budget_s - reserve_s
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
    stop = None if best is None else best * self.limits.stop_ratio
    result, runner = self.measure(self.cands[key], stop)
    self.done[key] = result
    self._keep(result, runner)
    self.remaining.discard(key)
    self.timed += 1
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix_str(_postfix(self.done))
    if not result.feasible:
      trial.set_user_attr("reason", result.reason)
      raise _Infeasible(result.reason)
    if result.timing is not None:
      trial.set_user_attr("timing", result.timing.to_dict())
    return result.measured_time

  def _keep(self, result: CostEstimate, runner: Runner | None) -> None:
    """Keeps the runners of the ``keep_top`` fastest candidates."""
    if runner is None or not result.feasible or result.measured_time is None:
      return
    self.runners[result.plan] = runner
    times = {e.plan: e.measured_time for e in self.done.values()
             if e.plan in self.runners}
    for p in sorted(times, key=times.get)[self.limits.keep_top:]:
      del self.runners[p]

  def estimates(self) -> list[CostEstimate]:
    """Every candidate, measured where timed (now or in an earlier run)."""
    return [self.done.get(k, c) for k, c in self.cands.items()]


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
                    "tuning in memory.", stacklevel=4)
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
      timing = t.user_attrs.get("timing")
      done[key] = dataclasses.replace(
          cands[key], measured_time=t.value,
          timing=None if timing is None else Timing.from_dict(timing))
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
