"""The planner behind ``implementation="auto"``.

For one call signature it

1. lists the **candidates**: every available method, unchunked, and (when
   ``vmap_axes`` allows it) chunked over the batch with a few block sizes
   and both chunking schemes;
2. **estimates** them cheaply: each unchunked method is traced and lowered
   (no compile) and read with XLA's HLO cost analysis; a chunked candidate
   is estimated from its block programs times the block counts (XLA counts
   loop bodies once), and only when the unchunked ones do not fit the
   memory budget or a full report is asked for;
3. **compiles a shortlist**: the fastest predicted candidate, and the
   runner-up only when its prediction is within ``close_call`` of the
   fastest, to read exact peak memory and fused byte counts. The compile
   goes through the same jitted function the call will run, so the chosen
   plan is not compiled twice;
4. **chooses** the compiled feasible candidate with the least predicted time.

Plans are memoised per call signature (abstract shapes, dtypes, pytree
structure and static kwargs), so repeated calls pay nothing. The entry
points :meth:`Planner.candidates`, :meth:`Planner.estimate` and
:meth:`Planner.choose` are public for the tuner and the plan cache.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
import weakref
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _kwargs, methods
from autontk import chunking as chunking_lib
from autontk._options import Implementation
from autontk._plan import Plan
from autontk._problem import NtkProblem
from autontk.costmodel import hlo, memory
from autontk.costmodel import predict as predict_lib
from autontk.costmodel.estimate import CostEstimate
from autontk.report import CostReport


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
      roofline with this device's measured constants).
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
    if "methods" in options and options["methods"] is not None:
      options["methods"] = tuple(Implementation.parse(m)
                                 for m in options["methods"])
      if Implementation.AUTO in options["methods"]:
        raise ValueError("`methods` must list explicit methods, not 'auto'.")
    if "block_sizes" in options and options["block_sizes"] is not None:
      sizes = tuple(options["block_sizes"])
      if any(isinstance(b, bool) or not isinstance(b, int) or b < 1
             for b in sizes):
        raise ValueError(f"`block_sizes` must be positive ints; got {sizes}.")
      options["block_sizes"] = sizes
    if "schemes" in options:
      options["schemes"] = tuple(options["schemes"])
      for s in options["schemes"]:
        if s not in chunking_lib.SCHEMES:
          raise ValueError(f"`schemes` entries must be in {chunking_lib.SCHEMES};"
                           f" got {s!r}.")
    shortlist = options.get("shortlist", 2)
    if isinstance(shortlist, bool) or not isinstance(shortlist, int) or (
        shortlist < 1):
      raise ValueError(f"`shortlist` must be an int >= 1; got {shortlist!r}.")
    if options.get("close_call", 1.5) < 1:
      raise ValueError("`close_call` must be >= 1.")
    payback = options.get("payback_calls", 100)
    if isinstance(payback, bool) or not isinstance(payback, int) or (
        payback < 0):
      raise ValueError(f"`payback_calls` must be an int >= 0; got {payback!r}.")
    predictor = options.get("predictor")
    if predictor is not None and not isinstance(predictor,
                                                predict_lib.TimePredictor):
      raise TypeError("`predictor` needs a predict(features) -> seconds "
                      "method.")
    if "memory_budget" in options and options["memory_budget"] is not None:
      memory.budget(options["memory_budget"])  # validates
    return PlannerOptions(**options)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One plan the planner may choose."""

  plan: Plan

  def describe(self) -> str:
    return self.plan.describe()


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v))
      if _kwargs.is_array_leaf(v) else v, tree)


def call_key(x1: Any, x2: Any, params: Any, kwargs: dict[str, Any]) -> Any:
  """Abstract signature of a call: structure, shapes, dtypes, static kwargs.

  On the path of every ``implementation="auto"`` call, so kept cheap.
  """
  def sig(tree):
    leaves, td = jax.tree.flatten(tree)
    return td, tuple((tuple(v.shape), v.dtype) if _kwargs.is_array_leaf(v) else
                     ("static", _hashable(v)) for v in leaves)
  return (sig(x1), None if x2 is None else sig(x2), sig(params), sig(kwargs))


class PlanningCall:
  """One call ``ntk(x1, x2, params, **kwargs)`` being planned."""

  def __init__(self, ntk: Any, x1: Any, x2: Any, params: Any,
               kwargs: dict[str, Any]):
    self.ntk, self.x1, self.x2 = ntk, x1, x2
    self.params, self.kwargs = params, dict(kwargs)
    self.dynamic, self.static_key = _kwargs.split_static(self.kwargs)
    self._problem: NtkProblem | None = None
    self._block_costs: dict[Any, tuple[Any, hlo.HloCost]] = {}
    self._lowered: dict[Plan, tuple[Any, hlo.HloCost]] = {}

  @property
  def problem(self) -> NtkProblem:
    if self._problem is None:
      self._problem = self.ntk.problem(self.x1, self.x2, self.params,
                                       **self.kwargs)
    return self._problem

  def key(self) -> Any:
    """Abstract signature: structure, shapes, dtypes, static kwargs."""
    return call_key(self.x1, self.x2, self.params, self.kwargs)

  def lower(self, plan: Plan):
    """``(lowered, cost)`` of the NtkFn's own executable for ``plan``.

    Memoised per plan, so a shortlisted candidate is traced only once.
    """
    if plan not in self._lowered:
      run = self.ntk._executable(plan, self.x2 is None, self.static_key)  # noqa: SLF001
      if not hasattr(run, "lower"):  # ntk_fn(..., jit=False): analyse a jit
        run = jax.jit(run)
      self._lowered[plan] = hlo.lower_and_analyse(
          run, _abstract(self.params), _abstract(self.x1),
          _abstract(self.x2), _abstract(self.dynamic))
    return self._lowered[plan]

  def describe(self) -> str:
    def shapes(tree):
      return ", ".join(str(tuple(np.shape(v))) for v in jax.tree.leaves(tree)
                       if _kwargs.is_array_leaf(v))
    x2 = "None" if self.x2 is None else shapes(self.x2)
    return f"x1 {shapes(self.x1)}; x2 {x2}; {self.problem.n_params} params"


def _hashable(v: Any) -> Any:
  try:
    hash(v)
    return v
  except TypeError:
    return repr(v)


class Planner:
  """Chooses a :class:`Plan` per call signature from the cost model.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> ntk = autontk.ntk_fn(f, vmap_axes=0)
  >>> plan = ntk.plan(jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  >>> plan.implementation in autontk.methods.available()
  True
  """

  def __init__(self, options: PlannerOptions | None = None):
    self.options = options or PlannerOptions()
    self._predictor = self.options.predictor
    self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

  @property
  def predictor(self) -> predict_lib.TimePredictor:
    if self._predictor is None:
      self._predictor = predict_lib.default_predictor()
    return self._predictor

  # The NtkFn hook ------------------------------------------------------------

  def __call__(self, ntk: Any, x1: Any, x2: Any, params: Any,
               kwargs: dict[str, Any]) -> Plan:
    return self.plan_report(ntk, x1, x2, params, kwargs).chosen

  def plan_report(self, ntk: Any, x1: Any, x2: Any, params: Any,
                  kwargs: dict[str, Any], full: bool = False) -> CostReport:
    """The memoised report of this call signature (planning if new)."""
    call = PlanningCall(ntk, x1, x2, params, kwargs)
    memo = self._memo.setdefault(ntk, {})
    key = call.key()
    try:
      hash(key)
    except TypeError:
      key = None
    found = memo.get((key, full)) if key is not None else None
    if found is None and not full and key is not None:
      found = memo.get((key, True))
    if found is not None:
      return found
    report = self.plan_call(call, full=full)
    earlier = memo.get((key, False)) if (full and key is not None) else None
    if earlier is not None:
      report = _keep_first_compile_times(report, earlier)
    if key is not None:
      memo[(key, full)] = report
    return report

  # Public stages -------------------------------------------------------------

  def candidates(self, call: PlanningCall) -> list[Candidate]:
    """Every method unchunked, then the memory-saving variants.

    The variants are batch chunkings (when ``vmap_axes`` allows them) and,
    for NTK-vector products, column chunks (a memory knob that needs no
    ``vmap_axes``).
    """
    impls = self.options.methods or methods.available()
    impls = [m for m in impls if m in methods.available()]
    out = [Candidate(Plan(m)) for m in impls]
    if not self.options.chunking:
      return out
    nvp = Implementation.NTK_VECTOR_PRODUCTS
    if nvp in impls:
      config_type = methods.get(nvp).config_type
      columns = _columns(call.problem)
      for c in _COLUMN_CHUNKS:
        if c < columns:
          out.append(Candidate(Plan(nvp, config_type(column_chunk=c))))
    if chunking_lib.unsupported_reason(call.problem) is not None:
      return out
    n = max(call.problem.batch_size(1), call.problem.batch_size(2))
    sizes = self.options.block_sizes or tuple(chunking_lib.block_sizes(n))
    for m in impls:
      for b in sizes:
        if b >= n:
          continue
        for s in self.options.schemes:
          out.append(Candidate(Plan(
              m, chunking=chunking_lib.BatchChunking(b, s))))
    return out

  def estimate(self, candidate: Candidate, call: PlanningCall,
               compile: bool = False,
               budget: memory.MemoryBudget | None = None) -> CostEstimate:
    """The :class:`CostEstimate` of one candidate (lowered, or compiled)."""
    budget = budget or memory.budget(self.options.memory_budget)
    plan = candidate.plan
    try:
      if plan.chunking is None:
        est = self._estimate_whole(plan, call, compile)
      else:
        est = self._estimate_chunked(plan, call, compile)
    except Exception as e:  # noqa: BLE001 - a failing candidate is infeasible
      return CostEstimate(plan, feasible=False, source="skipped",
                          reason=f"failed: {type(e).__name__}: {e}"[:300])
    est = dataclasses.replace(
        est, predicted_time=float(self.predictor.predict(est.features())))
    if not budget.fits(est.peak_memory):
      kind = "" if est.peak_memory_exact else "estimated "
      est = dataclasses.replace(
          est, feasible=False,
          reason=f"{kind}peak memory {_mb(est.peak_memory)} exceeds the "
                 f"budget {_mb(budget.bytes)}")
    return est

  def choose(self, estimates: Sequence[CostEstimate]) -> Plan:
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

  # Planning ------------------------------------------------------------------

  def plan_call(self, call: PlanningCall, full: bool = False) -> CostReport:
    """Estimates, shortlists and chooses (see the module docstring)."""
    t0 = time.perf_counter()
    budget = memory.budget(self.options.memory_budget)
    cands = self.candidates(call)
    ests: dict[Plan, CostEstimate] = {}
    lowered_pred: dict[Plan, float] = {}

    def run_estimates(group):
      for c in group:
        e = self.estimate(c, call, budget=budget)
        ests[c.plan] = e
        if e.estimated:
          lowered_pred[c.plan] = e.predicted_time

    whole = [c for c in cands if not is_memory_variant(c.plan)]
    chunked = [c for c in cands if is_memory_variant(c.plan)]
    run_estimates(whole)
    need_chunks = not any(e.feasible for e in ests.values())
    if full or need_chunks:
      run_estimates(chunked)
    chosen = self._shortlist(call, ests, lowered_pred, budget)
    if chosen is None and not (full or need_chunks) and chunked:
      run_estimates(chunked)
      chosen = self._shortlist(call, ests, lowered_pred, budget)
    for c in chunked:
      ests.setdefault(c.plan, CostEstimate(
          c.plan, source="skipped",
          reason="not estimated: an unchunked plan fits the budget"))
    if chosen is None:
      fallback = [e for e in ests.values() if e.peak_memory is not None]
      if not fallback:
        raise ValueError("The planner could not estimate any candidate: " +
                         "; ".join(f"{e.plan.describe()}: {e.reason}"
                                   for e in ests.values()))
      chosen = min(fallback, key=lambda e: e.peak_memory).plan
      warnings.warn(
          f"No candidate plan fits the memory budget {_mb(budget.bytes)}; "
          f"using the one with the least peak memory ({chosen.describe()}).",
          RuntimeWarning, stacklevel=3)
    ordered = [ests[c.plan] for c in cands]
    return CostReport(
        estimates=tuple(ordered), chosen=chosen, budget=budget,
        planning_time=time.perf_counter() - t0,
        predictor=predict_lib.describe(self.predictor),
        device=str(jax.devices()[0].device_kind), call=call.describe())

  def _shortlist(self, call, ests, lowered_pred, budget) -> Plan | None:
    """Compiles the most promising candidates; returns the choice or None.

    Candidates whose lowered memory estimate fits come first; the others
    (the estimate is rough) follow, fastest first, until ``shortlist``
    candidates are confirmed feasible or ``shortlist + 4`` compiles are spent.
    Once one is confirmed, a runner-up is compiled only if it is a close call
    (``close_call``) and the leader runs long enough for a second compile to
    pay back (``payback_calls``).
    """
    def rank(e):
      return (0 if e.feasible else 1, e.predicted_time)

    ranked = sorted((e for e in ests.values() if e.estimated and
                     e.compile_time is None and not (
                         not e.feasible and e.peak_memory_exact)), key=rank)
    confirmed = [e for e in ests.values()
                 if e.feasible and e.compile_time is not None]
    first: float | None = None
    leader: CostEstimate | None = None
    attempts = 0
    for e in ranked:
      if (len(confirmed) >= self.options.shortlist or
          attempts >= self.options.shortlist + 4):
        break
      if first is not None and (lowered_pred[e.plan] >
                                self.options.close_call * first):
        break
      if leader is not None and not self._pays_back(leader):
        break
      attempts += 1
      ce = self.estimate(Candidate(e.plan), call, compile=True, budget=budget)
      ests[e.plan] = ce
      if ce.feasible:
        confirmed.append(ce)
        if first is None:
          first, leader = lowered_pred[e.plan], ce
    if not confirmed:
      return None
    return self.choose(confirmed)

  def _pays_back(self, leader: CostEstimate) -> bool:
    """Would ``payback_calls`` calls of ``leader`` outlast its compile?"""
    if self.options.payback_calls == 0 or not leader.compile_time:
      return True
    return (self.options.payback_calls * leader.predicted_time >=
            leader.compile_time)

  def _estimate_whole(self, plan: Plan, call: PlanningCall,
                      compile: bool) -> CostEstimate:
    lowered, cost = call.lower(plan)
    analysis_time = cost.seconds
    compile_time = None
    # Some backends (CUDA as a PJRT plugin) analyse compiled programs only.
    compile = compile or cost.flops is None
    if compile:
      _, ccost = hlo.compile_and_analyse(lowered)
      compile_time = ccost.seconds
      cost = _merge_compiled(cost, ccost)
    iterations = 0
    chunk = getattr(plan.config, "column_chunk", None)
    if chunk is not None:
      # XLA counts the column loop once: take the work of the unchunked
      # program (same arithmetic, vectorised) and charge loop iterations.
      whole = self._estimate_whole(dataclasses.replace(plan, config=None),
                                   call, compile=False)
      cost = dataclasses.replace(
          cost, flops=whole.flops, bytes_accessed=whole.bytes_accessed,
          transcendentals=whole.transcendentals,
          grouped_conv_flops=whole.grouped_conv_flops,
          depthwise_conv_flops=whole.depthwise_conv_flops)
      iterations = -(-_columns(call.problem) // chunk)
    return CostEstimate(
        plan, cost.flops, cost.bytes_accessed, cost.transcendentals,
        cost.peak_memory, cost.peak_memory_exact, analysis_time, compile_time,
        source=cost.source, grouped_conv_flops=cost.grouped_conv_flops,
        depthwise_conv_flops=cost.depthwise_conv_flops,
        loop_iterations=iterations)

  def _block_cost(self, call: PlanningCall, plan: Plan, grid, kind: str,
                  compile: bool) -> tuple[hlo.HloCost, float]:
    """Cost of one block program and the seconds spent compiling it now."""
    inner = dataclasses.replace(plan, chunking=None)
    key = (inner, grid.b1, grid.b2, kind)
    cached = call._block_costs.get(key)  # noqa: SLF001
    if cached is None:
      spec = chunking_lib._block_spec(inner, call.problem, grid,  # noqa: SLF001
                                  same=(kind == "diag"))
      jitted = chunking_lib._jitted_block(spec)  # noqa: SLF001
      args = _abstract(chunking_lib._BlockArgs.of(call.problem))  # noqa: SLF001
      i32 = jax.ShapeDtypeStruct((), jnp.int32)
      cached = hlo.lower_and_analyse(jitted, args, i32, i32)
      call._block_costs[key] = cached  # noqa: SLF001
    lowered, cost = cached
    compile = compile or cost.flops is None  # no lowered analysis here
    if compile and cost.source == "lowered":
      _, ccost = hlo.compile_and_analyse(lowered)
      cost = _merge_compiled(cost, ccost)
      call._block_costs[key] = (lowered, cost)  # noqa: SLF001
      return cost, ccost.seconds
    return cost, 0.0

  def _estimate_chunked(self, plan: Plan, call: PlanningCall,
                        compile: bool) -> CostEstimate:
    problem = call.problem
    grid = plan.chunking.grid(problem)
    host = plan.chunking.host_loop
    total = hlo.HloCost(0.0, 0.0, 0.0, None, True, "scaled")
    block_peak, exact, compile_time = 0.0, True, 0.0
    for kind, pairs in grid.programs().items():
      cost, seconds = self._block_cost(call, plan, grid, kind,
                                       compile and host)
      compile_time += seconds
      total = total.plus(cost.scaled(len(pairs)))
      block_peak = max(block_peak, cost.peak_memory or 0.0)
      exact = exact and cost.peak_memory_exact
    kernel = _kernel_bytes(problem, grid)
    # Assembly: stacked blocks -> grid -> kernel, each read and written.
    bytes_ = (total.bytes_accessed or 0.0) + 6 * kernel
    peak = block_peak + 3 * kernel
    if compile and not host:
      lowered, _ = call.lower(plan)
      _, ccost = hlo.compile_and_analyse(lowered)
      compile_time = ccost.seconds
      if ccost.peak_memory is not None:
        peak, exact = ccost.peak_memory, True
    n = grid.n_blocks
    return CostEstimate(
        plan, total.flops, bytes_, total.transcendentals, peak, exact,
        total.seconds, compile_time if compile else None, source="scaled",
        blocks=n, calls=(n + 1) if host else 1,
        loop_iterations=0 if host else n,
        grouped_conv_flops=total.grouped_conv_flops,
        depthwise_conv_flops=total.depthwise_conv_flops)


_COLUMN_CHUNKS = (64, 8)
"""``column_chunk`` values tried for NTK-vector products."""


def _columns(problem: NtkProblem) -> int:
  """Kernel columns NTK-vector products evaluate (an upper bound)."""
  return sum(math.prod(o.shape) for o in problem.out2)


def is_memory_variant(plan: Plan) -> bool:
  """Chunked over the batch or over kernel columns."""
  return (plan.chunking is not None or
          getattr(plan.config, "column_chunk", None) is not None)


def _merge_compiled(lowered: hlo.HloCost, compiled: hlo.HloCost) -> hlo.HloCost:
  """Compiled numbers where known (fused bytes, exact memory).

  Off CPU, FLOPs never fall below the contractions counted in the lowered
  text: GPU backends report custom-call matmuls as -1 (unknown). On CPU the
  compiled count is exact, and may be lower after XLA's simplifications.
  """
  def pick(c, l):
    return c if c is not None else l
  flops = pick(compiled.flops, lowered.flops)
  if lowered.contraction_flops and (compiled.flops is None or
                                    jax.default_backend() != "cpu"):
    flops = max(flops or 0.0, lowered.contraction_flops)
  return hlo.HloCost(
      flops,
      pick(compiled.bytes_accessed, lowered.bytes_accessed),
      pick(compiled.transcendentals, lowered.transcendentals),
      pick(compiled.peak_memory, lowered.peak_memory),
      compiled.peak_memory is not None, "compiled",
      lowered.seconds, lowered.grouped_conv_flops,
      lowered.depthwise_conv_flops, lowered.contraction_flops)


def _kernel_bytes(problem: NtkProblem, grid) -> float:
  pad = (grid.nb1 * grid.b1 / grid.n1) * (
      1.0 if grid.matched else grid.nb2 * grid.b2 / grid.n2)
  return pad * sum(
      math.prod(problem.kernel_shape(i)) *
      jnp.dtype(problem.kernel_dtype(i)).itemsize
      for i in range(len(problem.out1)))


def _mb(b: float | None) -> str:
  if b is None:
    return "?"
  return f"{b / 1e6:.3g} MB"


def _keep_first_compile_times(report: CostReport,
                              earlier: CostReport) -> CostReport:
  """A full report made after planning finds the plans it compiled in JAX's
  in-memory cache, so its compile times would read ~0: keep the real ones."""
  first = {e.plan: e.compile_time for e in earlier.estimates
           if e.compile_time is not None}
  estimates = tuple(
      dataclasses.replace(e, compile_time=first[e.plan])
      if e.plan in first else e for e in report.estimates)
  return dataclasses.replace(report, estimates=estimates)
