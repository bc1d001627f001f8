"""Estimating a candidate plan: its features, predicted time and feasibility.

:func:`estimate` prices one plan of one call from the programs the plan runs:

* an unchunked plan is its NtkFn executable, lowered (and, when asked,
  compiled) and read by :mod:`~autontk.costmodel.hlo`;
* a method's memory variant (e.g. column-chunked NTK-vector products) loops
  over the default config's work: the work is read from the default
  config's program, the kernels from the variant's own, and the method's
  record says how many loop iterations the variant adds (as
  ``loop_iterations``, apart from the programs' own
  ``inner_loop_iterations``);
* a batch-chunked plan is the sum of its block programs, each times the
  number of blocks that run it, plus what assembling the kernel costs (both
  supplied by the chunking itself).

:class:`CostEstimate` is the result, and the one record of a candidate
everywhere: in cost reports, tuning results and plan-cache rows, with one
encoding (:meth:`CostEstimate.to_dict`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

from autontk import _plan, methods
from autontk._plan import Plan
from autontk.costmodel import hlo
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.measurement import Timing
from autontk.costmodel.memory import MemoryBudget
from autontk.costmodel.predict import TimePredictor


@dataclasses.dataclass(frozen=True)
class CostEstimate:
  """One candidate plan: what it costs, predicted and, where known, measured.

  Attributes:
    plan: the candidate.
    features: its work and memory (:class:`CostFeatures`).
    source: ``"lowered"``, ``"compiled"``, ``"scaled"`` (from block
      programs), ``"skipped"`` (not estimated) or ``"cache"`` (read back
      from the plan cache).
    analysis_time: seconds spent tracing and lowering for the estimate.
    compile_time: seconds spent compiling it (``None`` if not compiled).
    predicted_time: predicted seconds per call (``None`` if not estimated).
    measured_time: measured median seconds per call, where known.
    feasible: within the memory budget (and supported).
    reason: why infeasible, or why not estimated; ``None`` otherwise.
    timing: how it was timed (:class:`~autontk.costmodel.measurement.Timing`),
      if timed.

  >>> import autontk
  >>> e = CostEstimate(autontk.Plan(autontk.Implementation(1)),
  ...                  predicted_time=1e-3)
  >>> CostEstimate.from_dict(e.to_dict()) == e
  True
  """

  plan: Plan
  features: CostFeatures = CostFeatures()
  source: str = "lowered"
  analysis_time: float = 0.0
  compile_time: float | None = None
  predicted_time: float | None = None
  measured_time: float | None = None
  feasible: bool = True
  reason: str | None = None
  timing: Timing | None = None

  @property
  def estimated(self) -> bool:
    return self.predicted_time is not None

  @property
  def flops(self) -> float | None:
    return self.features.flops

  @property
  def bytes_accessed(self) -> float | None:
    return self.features.bytes_accessed

  @property
  def peak_memory(self) -> float | None:
    return self.features.peak_memory

  @property
  def peak_memory_exact(self) -> bool:
    return self.features.peak_memory_exact

  @property
  def blocks(self) -> int:
    return self.features.blocks

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form: the one encoding of a candidate, in cost reports and
    plan-cache rows."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["plan"] = _plan.plan_to_dict(self.plan)
    d["features"] = self.features.to_row()
    d["timing"] = None if self.timing is None else self.timing.to_dict()
    return d

  @staticmethod
  def from_dict(d: Mapping[str, Any]) -> "CostEstimate":
    """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
    d = dict(d)
    plan = _plan.plan_from_dict(d.pop("plan"))
    features = CostFeatures.from_row(d.pop("features", None),
                                     plan.implementation.name.lower())
    timing = d.pop("timing", None)
    names = {f.name for f in dataclasses.fields(CostEstimate)}
    return CostEstimate(
        plan, features,
        timing=None if timing is None else Timing.from_dict(timing),
        **{k: v for k, v in d.items() if k in names})


class ProgramCache:
  """Lowered and compiled programs of one call signature, each analysed once.

  :meth:`bind` gives it the function that lowers a plan's executable for
  the call at hand (so a compile made while planning is the one the call
  then reuses); unbound, it still answers for the programs it holds, which
  lets a later report of the same signature reuse them without keeping the
  first call's arguments alive.
  """

  def __init__(self):
    self._lower_plan: Callable[[Plan], Any] | None = None
    self._compile_plan: Callable[[Plan], Any] | None = None
    self._lowered: dict[Any, tuple[Any, CostFeatures, float]] = {}
    self._compiled: dict[Any, tuple[CostFeatures, float]] = {}

  def bind(self, lower_plan: Callable[[Plan], Any] | None,
           compile_plan: Callable[[Plan], Any] | None = None) -> None:
    """Sets ``plan -> jax.stages.Lowered`` (and ``-> Compiled``: the
    executable a call with these arguments will then run) for plans not
    held yet."""
    self._lower_plan = lower_plan
    self._compile_plan = compile_plan

  def whole(self, plan: Plan) -> tuple[Any, CostFeatures, float]:
    """``(lowered, features, seconds)`` of the executable of ``plan``."""
    if plan not in self._lowered:
      if self._lower_plan is None:
        raise ValueError("ProgramCache.bind() a lowering function first.")
      self._lowered[plan] = hlo.lower_and_analyse(_Lowerer(self._lower_plan,
                                                           plan))
    return self._lowered[plan]

  def block(self, program: Any) -> tuple[Any, CostFeatures, float]:
    """``(lowered, features, seconds)`` of a chunking's block program."""
    key = _hashable_or_none(("block", program.key))
    if key is None or key not in self._lowered:
      result = hlo.lower_and_analyse(program.fn, *program.args)
      if key is None:
        return result
      self._lowered[key] = result
    return self._lowered[key]

  def compiled(self, key: Any, lowered: Any) -> tuple[CostFeatures, float]:
    """``(features, seconds)`` of compiling ``lowered`` (memoised by key).

    A whole plan (``key`` a :class:`Plan`) is compiled through the bound
    ``compile_plan``, so the call reuses the executable.
    """
    hashable = _hashable_or_none(("compiled", key))
    if hashable is None or hashable not in self._compiled:
      t = time.perf_counter()
      if isinstance(key, Plan) and self._compile_plan is not None:
        compiled = self._compile_plan(key)
      else:
        compiled = lowered.compile()
      result = hlo.analyse_compiled(compiled), time.perf_counter() - t
      if hashable is None:
        return result
      self._compiled[hashable] = result
    return self._compiled[hashable]


@dataclasses.dataclass(frozen=True)
class _Lowerer:
  """``lower()`` of one plan, in the shape ``hlo.lower_and_analyse`` takes."""

  lower_plan: Callable[[Plan], Any]
  plan: Plan

  def lower(self) -> Any:
    return self.lower_plan(self.plan)


def _hashable_or_none(key: Any) -> Any:
  try:
    hash(key)
  except TypeError:
    return None
  return key


def estimate(plan: Plan, problem: Any, programs: ProgramCache, *,
             predictor: TimePredictor, budget: MemoryBudget,
             compile: bool = False) -> CostEstimate:
  """The :class:`CostEstimate` of ``plan`` for ``problem``.

  Args:
    plan: the candidate.
    problem: the call's :class:`~autontk._problem.NtkProblem`.
    programs: the call's :class:`ProgramCache`.
    predictor: maps the features to seconds.
    budget: candidates whose peak memory exceeds it are infeasible.
    compile: compile the programs (exact peak memory, fused byte counts)
      rather than only lowering them.

  Returns:
    The estimate; a candidate that fails to lower or compile is infeasible,
    with the error as its reason.
  """
  try:
    if plan.chunking is None:
      est = _whole(plan, problem, programs, compile)
    else:
      est = _chunked(plan, problem, programs, compile)
  except Exception as e:  # noqa: BLE001 - a failing candidate is infeasible
    return CostEstimate(plan, source="skipped", feasible=False,
                        reason=f"failed: {type(e).__name__}: {e}"[:300])
  est = dataclasses.replace(
      est, predicted_time=float(predictor.predict(est.features)))
  if not budget.fits(est.peak_memory):
    kind = "" if est.peak_memory_exact else "estimated "
    est = dataclasses.replace(
        est, feasible=False,
        reason=f"{kind}peak memory {megabytes(est.peak_memory)} exceeds the "
               f"budget {megabytes(budget.bytes)}")
  return est


def _whole(plan: Plan, problem: Any, programs: ProgramCache,
           compile: bool) -> CostEstimate:
  lowered, features, analysis = programs.whole(plan)
  compile_time, source = None, "lowered"
  # Some backends (CUDA as a PJRT plugin) analyse compiled programs only.
  if compile or features.flops is None:
    compiled, compile_time = programs.compiled(plan, lowered)
    features, source = hlo.merge_compiled(features, compiled), "compiled"
  iterations = methods.get(plan.implementation).loop_iterations(problem,
                                                                plan.config)
  if iterations:
    # Take the work of the default config (same arithmetic, vectorised) and
    # charge the variant's loop iterations as the plan's; its kernels are
    # its own (each column chunk launches the body's kernels again).
    base = programs.whole(dataclasses.replace(plan, config=None))[1]
    features = dataclasses.replace(features.with_work_of(base),
                                   kernels=features.kernels)
  features = dataclasses.replace(
      features, method=plan.implementation.name.lower(),
      loop_iterations=iterations)
  return CostEstimate(plan, features, source, analysis, compile_time)


def _chunked(plan: Plan, problem: Any, programs: ProgramCache,
             compile: bool) -> CostEstimate:
  inner = dataclasses.replace(plan, chunking=None)
  host = plan.chunking.host_loop
  total = CostFeatures(flops=0.0, bytes_accessed=0.0, transcendentals=0.0)
  block_peak, exact, analysis, compile_time, blocks = 0.0, True, 0.0, 0.0, 0
  for program in plan.chunking.block_programs(inner, problem):
    lowered, features, seconds = programs.block(program)
    analysis += seconds
    if (compile and host) or features.flops is None:
      compiled, seconds = programs.compiled(("block", program.key), lowered)
      features = hlo.merge_compiled(features, compiled)
      compile_time += seconds
    total = total.plus(features.scaled(program.count))
    block_peak = max(block_peak, features.peak_memory or 0.0)
    exact = exact and features.peak_memory_exact
    blocks += program.count
  assembly = plan.chunking.assembly_cost(problem)
  peak = block_peak + assembly.peak_memory
  if compile and not host:
    compiled, compile_time = programs.compiled(plan,
                                               programs.whole(plan)[0])
    if compiled.peak_memory is not None:
      peak, exact = compiled.peak_memory, True
  features = dataclasses.replace(
      total, method=plan.implementation.name.lower(),
      bytes_accessed=(total.bytes_accessed or 0.0) + assembly.bytes_accessed,
      peak_memory=peak, peak_memory_exact=exact, blocks=blocks,
      calls=(blocks + 1) if host else 1, loop_iterations=0 if host else blocks)
  return CostEstimate(plan, features, "scaled", analysis,
                      compile_time if compile else None)


def megabytes(b: float | None) -> str:
  """``"12.3 MB"`` (``"?"`` when unknown)."""
  if b is None:
    return "?"
  return f"{b / 1e6:.3g} MB"
