"""The cost-model planner: candidates → estimates → shortlist → choice.

For one call signature :meth:`Planner.plan_call`

1. lists the **candidates** (:meth:`Planner.candidates`): every available
   method unchunked, each method's memory variants, and (when
   ``vmap_axes`` allows it) every method chunked over the batch with a few
   block sizes and both chunking schemes;
2. **estimates** them with the cost model (:func:`autontk.costmodel.estimate
   .estimate`), lowering only: the unchunked plans first, and the memory
   variants only when no unchunked plan fits the memory budget (or a full
   report is asked for);
3. **compiles a shortlist**: the fastest predicted candidate, and the
   runner-up when its prediction is below the compiled leader's, or within
   ``close_call`` of the fastest where a second compile can pay for itself
   (``payback_calls``), to read exact peak memory and fused byte counts.
   The compile is the one the call then runs, so the chosen plan is not
   compiled twice;
4. **chooses** the compiled feasible candidate with the least predicted time.

The planner holds no memo: :class:`~autontk.auto.cached.AutoPlanner`
remembers its choices.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Sequence

import jax
import numpy as np

from autontk import _kwargs, methods
from autontk import chunking as chunking_lib
from autontk._options import Implementation
from autontk._plan import Plan
from autontk._problem import NtkProblem
from autontk.auto.report import CostReport
from autontk.costmodel import estimate as estimate_lib
from autontk.costmodel import memory
from autontk.costmodel import predict as predict_lib
from autontk.costmodel.calibration import CalibratedPredictor
from autontk.costmodel.estimate import CostEstimate, ProgramCache, megabytes
from autontk.plancache import PlanCache, Signature, model_signature
from autontk.plancache import shared_cache


@dataclasses.dataclass(frozen=True)
class PlannerOptions:
  """Options of the ``"auto"`` planner (``ntk_fn(f, **options)``).

  Attributes:
    memory_budget: ``None`` (default fraction of device/system memory), a
      fraction in (0, 1], or bytes (> 1). Candidates over it are infeasible.
    shortlist: at most this many candidates are compiled per signature.
    close_call: compile the runner-up only if its predicted time is within
      this factor of the fastest candidate's.
    payback_calls: ... and only if that many calls of the leading plan
      (predicted) take at least as long as compiling it did: when the kernel
      runs in microseconds and compiles in a second, a second compile to
      settle a close call would not pay for itself. ``0`` always compiles the
      close runner-up.
    chunking: consider chunked candidates at all.
    block_sizes: block sizes to try (default: halvings of the batch size).
    schemes: chunking schemes to try.
    methods: methods to consider (default: all registered).
    predictor: a :class:`~autontk.costmodel.TimePredictor` (default: the
      roofline with this device's measured constants, calibrated on the
      plan cache's timings).
  """

  memory_budget: float | int | None = None
  shortlist: int = 2
  close_call: float = 1.5
  payback_calls: int = 100
  chunking: bool = True
  block_sizes: tuple[int, ...] | None = None
  schemes: tuple[str, ...] = chunking_lib.SCHEMES
  methods: tuple[Implementation, ...] | None = None
  predictor: Any = dataclasses.field(default=None, compare=False)

  @staticmethod
  def make(**options: Any) -> "PlannerOptions":
    """Validated options; unknown names raise ``TypeError`` naming them."""
    names = {f.name for f in dataclasses.fields(PlannerOptions)}
    unknown = sorted(set(options) - names)
    if unknown:
      raise TypeError(f"Unknown options for ntk_fn: {unknown}; the auto "
                      f"planner takes {sorted(names)}.")
    for name, check in _CHECKS.items():
      if options.get(name) is not None:
        options[name] = check(options[name])
    return PlannerOptions(**options)

  def changed(self) -> dict[str, str]:
    """The options that differ from the defaults (they change the choice,
    so they enter the plan cache's key)."""
    default = PlannerOptions()
    return {f.name: repr(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.compare and getattr(self, f.name) != getattr(default, f.name)}


def _check_methods(value: Any) -> tuple[Implementation, ...]:
  out = tuple(Implementation.parse(m) for m in value)
  if Implementation.AUTO in out:
    raise ValueError("`methods` must list explicit methods, not 'auto'.")
  return out


def _check_block_sizes(value: Any) -> tuple[int, ...]:
  sizes = tuple(value)
  if any(isinstance(b, bool) or not isinstance(b, int) or b < 1
         for b in sizes):
    raise ValueError(f"`block_sizes` must be positive ints; got {sizes}.")
  return sizes


def _check_schemes(value: Any) -> tuple[str, ...]:
  schemes = tuple(value)
  for s in schemes:
    if s not in chunking_lib.SCHEMES:
      raise ValueError(f"`schemes` entries must be in {chunking_lib.SCHEMES};"
                       f" got {s!r}.")
  return schemes


def _check_count(name: str, least: int):
  def check(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"`{name}` must be an int >= {least}; got {value!r}.")
    return value
  return check


def _check_close_call(value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      value < 1):
    raise ValueError(f"`close_call` must be a number >= 1; got {value!r}.")
  return float(value)


def _check_predictor(value: Any) -> Any:
  if not isinstance(value, predict_lib.TimePredictor):
    raise TypeError("`predictor` needs a predict(features) -> seconds "
                    "method.")
  return value


def _check_budget(value: Any) -> Any:
  memory.budget(value)  # validates
  return value


_CHECKS = {
    "methods": _check_methods, "block_sizes": _check_block_sizes,
    "schemes": _check_schemes, "shortlist": _check_count("shortlist", 1),
    "close_call": _check_close_call,
    "payback_calls": _check_count("payback_calls", 0),
    "predictor": _check_predictor, "memory_budget": _check_budget,
}


def signature_of(ntk: Any, x1: Any, x2: Any, params: Any,
                 kwargs: dict[str, Any],
                 options: PlannerOptions | None = None) -> Signature:
  """The plan-cache key of one call of ``ntk``: its model signature, plus
  the planner options that differ from the defaults (a memory budget or a
  method list changes the choice)."""
  changed = options.changed() if options is not None else {}
  return model_signature(ntk, x1, x2, params, kwargs,
                         extra={"planner": changed} if changed else None)


def calibrated_predictor(cache: PlanCache | None = None
                         ) -> CalibratedPredictor:
  """This device's roofline, corrected by the timings in ``cache`` (default:
  the shared plan cache)."""
  kind = jax.devices()[0].device_kind
  source_cache = cache

  def measurements():
    return (source_cache or shared_cache()).measurements(kind)

  return CalibratedPredictor(predict_lib.default_predictor(), measurements,
                             kind)


class PlanningCall:
  """One call ``ntk(x1, x2, params, **kwargs)`` being planned.

  Args:
    ntk: the :class:`~autontk.NtkFn`.
    x1, x2, params, kwargs: the call's arguments.
    programs: lowered programs of an earlier call of the same signature to
      reuse (see :meth:`detach`); default a new cache.
  """

  def __init__(self, ntk: Any, x1: Any, x2: Any, params: Any,
               kwargs: dict[str, Any], programs: ProgramCache | None = None):
    self.ntk, self.x1, self.x2 = ntk, x1, x2
    self.params, self.kwargs = params, dict(kwargs)
    self.programs = programs or ProgramCache()
    self.programs.bind(self._lower, self._compile)
    self._problem: NtkProblem | None = None

  def _lower(self, plan: Plan) -> Any:
    return self.ntk.lower(plan, self.x1, self.x2, self.params, self.kwargs)

  def _compile(self, plan: Plan) -> Any:
    return self.ntk.compile(plan, self.x1, self.x2, self.params, self.kwargs)

  @property
  def problem(self) -> NtkProblem:
    if self._problem is None:
      self._problem = self.ntk.problem(self.x1, self.x2, self.params,
                                       **self.kwargs)
    return self._problem

  def detach(self) -> ProgramCache:
    """The lowered programs, no longer holding this call's arguments."""
    self.programs.bind(None, None)
    return self.programs

  def describe(self) -> str:
    def shapes(tree):
      return ", ".join(str(tuple(np.shape(v))) for v in jax.tree.leaves(tree)
                       if _kwargs.is_array_leaf(v))
    x2 = "None" if self.x2 is None else shapes(self.x2)
    return f"x1 {shapes(self.x1)}; x2 {x2}; {self.problem.describe()}"


class Planner:
  """Chooses a :class:`Plan` per call from the cost model.

  Args:
    options: the :class:`PlannerOptions`.
    predictor: the time predictor used when ``options.predictor`` is
      ``None`` (default: :func:`calibrated_predictor`).

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> ntk = autontk.ntk_fn(f, vmap_axes=0)
  >>> plan = ntk.plan(jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  >>> plan.implementation in autontk.methods.available()
  True
  """

  def __init__(self, options: PlannerOptions | None = None,
               predictor: predict_lib.TimePredictor | None = None):
    self.options = options or PlannerOptions()
    self._predictor = self.options.predictor or predictor

  @property
  def predictor(self) -> predict_lib.TimePredictor:
    if self._predictor is None:
      self._predictor = calibrated_predictor()
    return self._predictor

  def restricted(self, implementations: Sequence[Implementation]
                 ) -> "Planner":
    """The same planner considering only ``implementations``."""
    options = dataclasses.replace(self.options,
                                  methods=tuple(implementations))
    return Planner(options, self._predictor)

  # Stages ---------------------------------------------------------------------

  def candidates(self, call: PlanningCall) -> list[Plan]:
    """Every method unchunked, then the memory-saving variants.

    The variants are each method's own (e.g. NTK-vector products' column
    chunks, which need no ``vmap_axes``) and batch chunkings (when
    ``vmap_axes`` allows them).
    """
    impls = [m for m in (self.options.methods or methods.available())
             if m in methods.available()]
    out = [Plan(m) for m in impls]
    if not self.options.chunking:
      return out
    for m in impls:
      out.extend(Plan(m, config)
                 for config in methods.get(m).memory_variants(call.problem))
    if chunking_lib.unsupported_reason(call.problem) is not None:
      return out
    n = max(call.problem.batch_size(1), call.problem.batch_size(2))
    sizes = self.options.block_sizes or tuple(chunking_lib.block_sizes(n))
    out.extend(Plan(m, chunking=chunking_lib.BatchChunking(b, s))
               for m in impls for b in sizes if b < n
               for s in self.options.schemes)
    return out

  def estimate(self, plan: Plan, call: PlanningCall, compile: bool = False,
               budget: memory.MemoryBudget | None = None) -> CostEstimate:
    """The :class:`CostEstimate` of one candidate (lowered, or compiled)."""
    return estimate_lib.estimate(
        plan, call.problem, call.programs, predictor=self.predictor,
        budget=budget or self.budget(), compile=compile)

  def budget(self) -> memory.MemoryBudget:
    return memory.budget(self.options.memory_budget)

  @staticmethod
  def choose(estimates: Sequence[CostEstimate]) -> Plan:
    """The feasible estimate with the least predicted time.

    Compiled estimates (exact memory, fused byte counts) are preferred over
    lowered ones when there are any, since the two are not comparable.
    """
    ok = [e for e in estimates if e.feasible and e.estimated]
    pool = [e for e in ok if e.compile_time is not None] or ok
    if not pool:
      raise ValueError("No candidate plan is feasible: "
                       + "; ".join(f"{e.plan.describe()}: {e.reason}"
                                   for e in estimates))
    return min(pool, key=lambda e: e.predicted_time).plan

  # Planning -------------------------------------------------------------------

  def plan_call(self, call: PlanningCall, full: bool = False) -> CostReport:
    """Estimates, shortlists and chooses (see the module docstring)."""
    t0 = time.perf_counter()
    budget = self.budget()
    cands = self.candidates(call)
    variants = [p for p in cands if is_memory_variant(p, call.problem)]
    ests = {p: self.estimate(p, call, budget=budget) for p in cands
            if p not in variants}
    if full or not any(e.feasible for e in ests.values()):
      ests.update((p, self.estimate(p, call, budget=budget))
                  for p in variants)
    chosen = self._shortlist(call, ests, budget)
    if chosen is None and any(p not in ests for p in variants):
      ests.update((p, self.estimate(p, call, budget=budget))
                  for p in variants if p not in ests)
      chosen = self._shortlist(call, ests, budget)
    if chosen is None:
      chosen = _least_memory(ests.values(), budget)
    return self._report([ests.get(p) or _skipped(p) for p in cands], chosen,
                        budget, time.perf_counter() - t0, call)

  def complete(self, report: CostReport, call: PlanningCall) -> CostReport:
    """``report`` with every candidate it skipped estimated (lowered only,
    reusing the programs ``call`` already holds)."""
    t0 = time.perf_counter()
    budget = report.budget or self.budget()
    done = {e.plan: e for e in report.estimates if e.source != "skipped"}
    ests = [done.get(p) or self.estimate(p, call, budget=budget)
            for p in self.candidates(call)]
    return dataclasses.replace(
        report, estimates=tuple(ests),
        planning_time=report.planning_time + time.perf_counter() - t0)

  def _report(self, estimates, chosen, budget, seconds, call) -> CostReport:
    return CostReport(
        estimates=tuple(estimates), chosen=chosen, budget=budget,
        planning_time=seconds,
        predictor=predict_lib.describe(self.predictor),
        device=str(jax.devices()[0].device_kind), call=call.describe())

  def _shortlist(self, call: PlanningCall, ests: dict[Plan, CostEstimate],
                 budget: memory.MemoryBudget) -> Plan | None:
    """Compiles the most promising candidates; returns the choice or None.

    Candidates whose lowered memory estimate fits come first; the others
    (the estimate is rough) follow, fastest first, until ``shortlist``
    candidates are confirmed feasible or ``shortlist + 4`` compiles are
    spent. Once one is confirmed, a runner-up is compiled only if its
    prediction is below the confirmed ones' (the compile showed costs the
    lowered program hides, such as the layout copies XLA adds), or if it is
    a close call (``close_call``) and the leader runs long enough for a
    second compile to pay back (``payback_calls``).
    """
    ranked = sorted((e for e in ests.values() if e.estimated and
                     e.compile_time is None and not (
                         not e.feasible and e.peak_memory_exact)),
                    key=lambda e: (not e.feasible, e.predicted_time))
    confirmed = [e for e in ests.values()
                 if e.feasible and e.compile_time is not None]
    leader: tuple[float, CostEstimate] | None = None
    for attempts, e in enumerate(ranked):
      if (len(confirmed) >= self.options.shortlist or
          attempts >= self.options.shortlist + 4):
        break
      best = min((c.predicted_time for c in confirmed), default=None)
      if leader is not None and not e.predicted_time < best and (
          e.predicted_time > self.options.close_call * leader[0] or
          not self._pays_back(leader[1])):
        break
      ce = self.estimate(e.plan, call, compile=True, budget=budget)
      ests[e.plan] = ce
      if ce.feasible:
        confirmed.append(ce)
        leader = leader or (e.predicted_time, ce)
    return self.choose(confirmed) if confirmed else None

  def _pays_back(self, leader: CostEstimate) -> bool:
    """Would ``payback_calls`` calls of ``leader`` outlast its compile?"""
    if self.options.payback_calls == 0 or not leader.compile_time:
      return True
    return (self.options.payback_calls * leader.predicted_time >=
            leader.compile_time)


def is_memory_variant(plan: Plan, problem: NtkProblem) -> bool:
  """Chunked over the batch, or one of its method's memory variants."""
  return plan.chunking is not None or methods.get(
      plan.implementation).is_memory_variant(problem, plan.config)


def _skipped(plan: Plan) -> CostEstimate:
  return CostEstimate(plan, source="skipped",
                      reason="not estimated: an unchunked plan fits the "
                             "budget")


def _least_memory(estimates, budget: memory.MemoryBudget) -> Plan:
  known = [e for e in estimates if e.peak_memory is not None]
  if not known:
    raise ValueError("The planner could not estimate any candidate: " +
                     "; ".join(f"{e.plan.describe()}: {e.reason}"
                               for e in estimates))
  chosen = min(known, key=lambda e: e.peak_memory).plan
  warnings.warn(
      f"No candidate plan fits the memory budget {megabytes(budget.bytes)}; "
      f"using the one with the least peak memory ({chosen.describe()}).",
      RuntimeWarning, stacklevel=4)
  return chosen
