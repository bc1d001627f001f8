"""Dense or matrix-free: the one rule, and the prices of both routes.

Every kernel question (a prediction's solve, a diagnostic's spectrum) can
be answered on two routes: **dense** (materialise the ``M × M`` kernel,
then an exact factorisation) or **matrix-free** (Krylov iterations of
kernel-vector products). :func:`decide` is the rule both the predictions
and the diagnostics take:

1. a forced route wins;
2. the dense route is refused when the kernel is not given as an array and
   its bytes exceed the memory budget;
3. the matrix-free route is refused when its own memory exceeds the budget
   and the dense route fits;
4. otherwise the cheaper price wins, ties to dense (exact).

The prices come from two places:

* :func:`choose_route` prices a question on an
  :class:`~autontk.NtkOperator` in **seconds**, with the cost model's time
  predictor on the compiled programs: the dense kernel from its best plan,
  the products with the block sizes the solvers use, and iteration counts
  estimated from the tolerance on an NTK-like spectrum
  (:func:`lobpcg_iterations`, :func:`cg_iterations`,
  :func:`lanczos_steps`); a close call is confirmed by timing the
  programs; a :class:`RouteReport` says which and why.
* :func:`choose` prices a diagnostic in **floating-point operations** from
  a kernel's :class:`Pricing` and the diagnostic's :class:`Question`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import numpy as np

from autontk.auto import timing
from autontk.costmodel import hlo
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.predict import default_predictor
from autontk.operator import NtkOperator
from autontk.solvers import lanczos, preconditioners
from autontk.tiled.autotile import memory_budget_bytes

QUESTIONS = ("solve", "times", "eigsh")
"""``"solve"``: ``(Θ + λI)⁻¹ Y``; ``"times"``: ``fn(Θ) Y`` at many times
(gradient flow); ``"eigsh"``: ``k`` eigenpairs."""

DEFAULT_MEMORY_BUDGET = 2 ** 30
"""Bytes a diagnostic's materialised kernel may take (1 GiB) unless told
otherwise (:func:`choose`)."""

FORCED = ("dense", "matrix-free")

SPECTRUM_DECAY = 1.0
"""The iteration counts assume an NTK-like spectrum ``λ_i ∝ i^(-α)`` with
this ``α``: slow enough that the estimates are not optimistic on the
kernels measured (an MLP, a CNN and an attention block)."""

EIGH_FLOPS = 50.0
"""``eigh`` / ``eigvalsh`` priced as ``EIGH_FLOPS · M³`` FLOPs: the
tridiagonal reduction runs at memory speed (matrix-vector products), so it
takes 20–50 times a matrix product of the same size on the CPU, not the
``9·M³`` of its FLOP count."""

CHOLESKY_FLOPS = 1.0
"""A Cholesky solve priced as ``CHOLESKY_FLOPS · M³`` FLOPs (``M³/3`` of
work, at about a third of the matrix product's speed)."""

CG_TYPICAL = 0.35
"""CG's iterations are priced at this fraction of the bound
``½·√κ·ln(2/tol)``: the iterations measured over the bound (at the rank the
sketch reached) on sixteen solves of NTKs (MLPs, CNNs and attention
blocks; N = 512 to 2048; one and eight right-hand sides;
``docs/predict.md``) had a geometric mean of 0.38 and a median of 0.33,
and spread from 0.18 to 1.11."""

CLOSE_CALL = 2.0
"""Prices within this factor of each other are a close call: with
``measure=None`` both routes' programs are then timed
(:func:`choose_route`)."""

LOBPCG_STEP_CALLS = 10
"""Library calls (``eigh``, ``qr``, Cholesky of small blocks) per LOBPCG
iteration, each priced as one call's overhead."""

LOBPCG_STEP_FLOPS = 40.0
"""A LOBPCG iteration's own work, ``LOBPCG_STEP_FLOPS · M · (3k)²`` FLOPs
(Gram matrices, projections and basis updates of ``M × 3k`` blocks)."""


def decide(dense: float, free: float, *, dense_bytes: float, budget: float,
           free_bytes: float = 0.0, given_dense: bool = False,
           unit: str = "s", detail: str = "") -> tuple[bool, str]:
  """``(dense?, reason)``: the rule for one question's two prices.

  Args:
    dense: the dense route's price.
    free: the matrix-free route's price, in the same ``unit``.
    dense_bytes: the dense route's memory.
    budget: the memory budget in bytes.
    free_bytes: the matrix-free route's memory.
    given_dense: the kernel is already an array (its memory is spent).
    unit: the prices' unit, for the reason.
    detail: appended to the reason of a priced choice (after a space).

  Returns:
    Whether to take the dense route, and why in words.

  >>> decide(2.0, 1.0, dense_bytes=10, budget=100)
  (False, 'dense 2 s > matrix-free 1')
  >>> decide(2.0, 1.0, dense_bytes=2 ** 30, budget=2 ** 20)[1]
  'dense kernel 1 GiB > memory budget 1 MiB'
  """
  if not given_dense and dense_bytes > budget:
    return False, (f"dense kernel {_bytes(dense_bytes)} > memory budget "
                   f"{_bytes(budget)}")
  if free_bytes > budget:
    return True, (f"matrix-free {_bytes(free_bytes)} > memory budget "
                  f"{_bytes(budget)}")
  verdict = "<=" if dense <= free else ">"
  reason = f"dense {dense:.3g} {unit} {verdict} matrix-free {free:.3g}"
  return dense <= free, reason + (f" {detail}" if detail else "")


# --- Diagnostics: prices in FLOPs --------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pricing:
  """What one kernel costs, in FLOPs.

  Attributes:
    m: its size ``M``.
    apply_flops: one column of ``Θ V``.
    kernel_flops: materialising it; ``0`` when it is already an array.
    given_dense: it was given as an array (no memory is added by using it).
    note: how the prices were obtained.
  """

  m: int
  apply_flops: float
  kernel_flops: float
  given_dense: bool
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Question:
  """What one diagnostic costs on each route.

  Attributes:
    dense_flops: the dense computation once the kernel(s) are formed.
    columns: kernel columns ``Θ v`` the matrix-free route applies.
    kernels: how many kernels are formed on the dense route (2 for a
      distance between checkpoints).
  """

  dense_flops: float
  columns: float
  kernels: int = 1


def choose(question: Question, pricing: Pricing, route: str = "auto",
           memory_budget: float | None = None) -> tuple[str, str]:
  """``(route, reason)`` for a diagnostic's ``question`` on a kernel priced
  ``pricing``, by :func:`decide` (float64 kernels, priced in FLOPs).

  Args:
    question: its two prices.
    pricing: the kernel's.
    route: ``"auto"``, or ``"dense"`` / ``"matrix-free"`` to force one.
    memory_budget: bytes a materialised kernel may take (default
      :data:`DEFAULT_MEMORY_BUDGET`).

  Returns:
    ``("dense" | "matrix-free", reason)``.

  >>> q = Question(dense_flops=1e9 / 3, columns=60)
  >>> choose(q, Pricing(1000, 2e6, 0.0, True))[0]
  'matrix-free'
  """
  if route in FORCED:
    return route, f"forced (route={route!r})"
  if route != "auto":
    raise ValueError(f"route must be 'auto', 'dense' or 'matrix-free'; got "
                     f"{route!r}.")
  budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
  detail = f"({question.columns:.0f} columns)"
  if pricing.note:
    detail += f"; {pricing.note}"
  dense, reason = decide(
      question.kernels * pricing.kernel_flops + question.dense_flops,
      question.columns * pricing.apply_flops,
      dense_bytes=question.kernels * pricing.m ** 2 * 8, budget=budget,
      given_dense=pricing.given_dense, unit="FLOPs", detail=detail)
  return ("dense" if dense else "matrix-free"), reason


# --- Predictions: prices in seconds ------------------------------------------


@dataclasses.dataclass(frozen=True)
class RouteReport:
  """The two routes' prices and the choice.

  Attributes:
    route: ``"dense"`` or ``"matrix_free"``.
    reason: why, in words.
    dense_seconds: predicted seconds of the dense route (kernel + factor).
    dense_bytes: its memory (the kernel and its factor).
    dense_fits: ``dense_bytes`` within the budget.
    matrix_free_seconds: predicted seconds of the matrix-free route.
    matrix_free_bytes: its memory (one product's peak + Krylov vectors).
    products: column products the matrix-free route is priced with.
    budget: the memory budget in bytes.
    iterations: the solver's estimated iterations (CG, LOBPCG or Lanczos;
      0 where the solver goes dense itself).
    plan: the matrix-free route in words (iterations, block sizes).
    timed: the two prices are timings of the routes' programs (a close
      call, see ``measure`` of :func:`choose_route`), not predictions.
  """

  route: str
  reason: str
  dense_seconds: float
  dense_bytes: int
  dense_fits: bool
  matrix_free_seconds: float
  matrix_free_bytes: int
  products: int
  budget: int
  iterations: int = 0
  plan: str = ""
  timed: bool = False

  def __str__(self) -> str:
    return (f"route: {self.route} ({self.reason})\n"
            f"  dense:       {self.dense_seconds:.3g} s, "
            f"{self.dense_bytes / 2**20:.4g} MiB"
            f"{'' if self.dense_fits else ' (does not fit)'}\n"
            f"  matrix-free: {self.matrix_free_seconds:.3g} s, "
            f"{self.matrix_free_bytes / 2**20:.4g} MiB, "
            f"{self.products} column products ({self.plan})\n"
            f"  budget:      {self.budget / 2**20:.4g} MiB")


@dataclasses.dataclass(frozen=True)
class _FreePlan:
  """The matrix-free route of one question: ``{block columns: products}``,
  the solver's own work, its iterations and its stored vectors."""

  blocks: dict[int, int]
  work: CostFeatures
  iterations: int
  vectors: int
  plan: str
  dense_fallback: bool = False


def choose_route(op: NtkOperator, question: str = "solve", *, rhs: int = 1,
                 k: int = 10, tol: float = 1e-6, shift: float = 0.0,
                 memory_budget: int | None = None, predictor: Any = None,
                 measure: bool | None = None) -> RouteReport:
  """Prices the dense and matrix-free routes of ``question`` on ``op``.

  Dense: the kernel (the best plan of :func:`autontk.ntk_fn` on one batch
  of examples, times the batch pairs, as ``ntk_tiled`` runs it), then a
  Cholesky solve (``"solve"``) or ``eigh`` (``"times"``, ``"eigsh"``).
  Matrix-free: the products the solver runs, each priced from the compiled
  product program of its block size, plus the solver's own work (see
  ``docs/predict.md``).

  Args:
    op: the operator, from :func:`autontk.ntk_operator`.
    question: ``"solve"``, ``"times"`` or ``"eigsh"`` (:data:`QUESTIONS`).
    rhs: right-hand sides ``R`` (columns of ``Y``).
    k: eigenpairs, for ``"eigsh"``.
    tol: the solver tolerance the iterations are estimated from.
    shift: the ridge ``λ`` of ``"solve"`` (CG's iterations grow as it
      shrinks; at 0 they are priced at the solver's ``maxiter``).
    memory_budget: bytes (default: half the first device's available
      memory).
    predictor: a :class:`~autontk.costmodel.TimePredictor` (default: the
      roofline of this device).
    measure: confirm the prices by timing both routes' programs on the
      device (one kernel tile, one product of each block size, each run
      three times; the solvers' own work stays priced): ``None``
      (default) on a close call
      (prices within :data:`CLOSE_CALL` of each other, both routes within
      the budget), ``True`` whenever both fit, ``False`` never.

  Returns:
    A :class:`RouteReport`.

  >>> import jax.numpy as jnp, autontk
  >>> from autontk.route import choose_route
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> op = autontk.ntk_operator(f, jnp.ones((8, 3)), jnp.ones((3, 2)),
  ...                           batch_size=4)
  >>> choose_route(op, memory_budget=100).route   # 8×8 floats do not fit
  'matrix_free'
  """
  if question not in QUESTIONS:
    raise ValueError(f"`question` must be one of {QUESTIONS}; got "
                     f"{question!r}.")
  if rhs < 1 or k < 1 or not 0 < tol < 1 or shift < 0:
    raise ValueError("`rhs` and `k` must be positive, 0 < `tol` < 1 and "
                     "`shift` >= 0.")
  predictor = predictor or default_predictor()
  budget = int(memory_budget if memory_budget is not None else
               memory_budget_bytes(jax.local_devices()[0]))
  m = op.shape[0]
  item = np.dtype(op.dtype).itemsize
  dense_bytes = 2 * m * m * item
  dense_s = _dense_seconds(op, question, rhs, predictor,
                           functools.partial(_priced_tile, predictor))
  free = _free_plan(op, question, rhs, k, tol, shift)
  free_s, free_bytes = ((dense_s, dense_bytes) if free.dense_fallback else
                        _priced_free(op, free, predictor))
  timed = (not free.dense_fallback and
           _confirm(measure, dense_s, free_s,
                    max(dense_bytes, free_bytes) <= budget))
  if timed:  # the same sums, with the programs timed
    dense_s = _dense_seconds(op, question, rhs, predictor, _timed_tile)
    free_s = _free_seconds(free, predictor, _timed_products(op))
  dense, reason = decide(dense_s, free_s, dense_bytes=dense_bytes,
                         budget=budget, free_bytes=free_bytes,
                         detail=f"({free.plan}{'; timed' if timed else ''})")
  if not dense and free_bytes > budget:
    reason += ("; the matrix-free route needs "
               f"{_bytes(free_bytes)} too: neither fits")
  products = sum(r * n for r, n in free.blocks.items())
  return RouteReport("dense" if dense else "matrix_free", reason, dense_s,
                     dense_bytes, dense_bytes <= budget, free_s, free_bytes,
                     products, budget, free.iterations, free.plan, timed)


def _confirm(measure: bool | None, dense_s: float, free_s: float,
             both_fit: bool) -> bool:
  """Whether to time the routes (see ``measure`` of :func:`choose_route`)."""
  if not both_fit or measure is False:
    return False
  return measure is True or max(dense_s, free_s) <= CLOSE_CALL * min(
      dense_s, free_s)


_CONFIRMING = timing.TimingPolicy(warmup_s=0.0, min_time_s=0.0,
                                  min_repeats=1)
"""A close call is confirmed by one timed run of each program after its
compile and one warm-up run."""


def _dense_seconds(op: NtkOperator, question: str, rhs: int,
                   predictor: Any, tile_seconds: Callable[..., float]
                   ) -> float:
  """Kernel (one batch's tile, ``tile_seconds(ntk, args, kwargs)``,
  scaled to every batch pair, as ``ntk_tiled`` runs it) plus the priced
  factorisation and its solves."""
  m, n, b = op.shape[0], op.layout.n, op.batch_size
  tile_s = tile_seconds(*op.kernel_call(b))
  return tile_s * (n / min(b, n)) ** 2 + predictor.predict(
      _factor_work(question, m, rhs))


def _priced_tile(predictor: Any, ntk: Any, args: tuple,
                 kwargs: dict[str, Any]) -> float:
  """A tile's seconds as the cost model predicts its best plan."""
  report = ntk.report(*args, **kwargs)
  return predictor.predict(report.chosen_estimate.features)


def _timed_tile(ntk: Any, args: tuple, kwargs: dict[str, Any]) -> float:
  """A tile's seconds, timed (by the plan ``to_dense`` runs)."""
  return _seconds(lambda: ntk(*args, **kwargs))


def _priced_free(op: NtkOperator, free: _FreePlan,
                 predictor: Any) -> tuple[float, int]:
  """``(seconds, bytes)`` of the matrix-free route: the compiled product
  programs' predicted times and peak memory, plus its Krylov vectors."""
  costs = {r: _product_cost(op, r) for r in free.blocks}
  seconds = _free_seconds(free, predictor,
                          lambda r: predictor.predict(costs[r]))
  peak = max(int(c.peak_memory or 0) for c in costs.values())
  return seconds, peak + free.vectors * op.shape[0] * np.dtype(
      op.dtype).itemsize


def _free_seconds(free: _FreePlan, predictor: Any,
                  block_seconds: Callable[[int], float]) -> float:
  """The solver's priced work plus its products, ``block_seconds(r)`` each
  for a block of ``r`` columns."""
  return predictor.predict(free.work) + sum(
      count * block_seconds(r) for r, count in free.blocks.items())


def _timed_products(op: NtkOperator) -> Callable[[int], float]:
  """``r -> seconds`` of one product of ``r`` columns, timed as the
  solvers compile it (the operator's data inside the program)."""
  product = jax.jit(op.matmat)

  def seconds(r: int) -> float:
    v = jax.random.normal(jax.random.PRNGKey(r), (op.shape[0], r), op.dtype)
    return _seconds(lambda: product(v))

  return seconds


def _seconds(fn: Any) -> float:
  return timing.time_one(timing.seconds_of(fn), _CONFIRMING).median_s


def _factor_work(question: str, m: int, rhs: int) -> CostFeatures:
  """The dense route's work once the kernel is formed."""
  if question == "solve":
    flops = CHOLESKY_FLOPS * m ** 3 + 2.0 * m * m * rhs
  else:
    flops = EIGH_FLOPS * m ** 3 + 4.0 * m * m * rhs
  return CostFeatures(flops=flops, bytes_accessed=8.0 * m * m,
                      transcendentals=0.0)


def _product_cost(op: NtkOperator, r: int) -> CostFeatures:
  """The compiled product program's cost for ``r`` columns, kept with the
  operator (compiling it is most of pricing a route)."""
  costs = op.__dict__.setdefault("_autontk_product_costs", {})
  if r not in costs:
    costs[r] = hlo.analyse_compiled(op.lower(r).compile())
  return costs[r]


def _free_plan(op: NtkOperator, question: str, rhs: int, k: int, tol: float,
               shift: float) -> _FreePlan:
  m = op.shape[0]
  if question == "solve":
    return _cg_plan(op, m, rhs, tol, shift)
  if question == "times":
    return _lanczos_plan(m, rhs, tol)
  if 5 * k >= m or m <= 32:
    # eigsh itself goes dense for such k.
    return _FreePlan({}, CostFeatures(), 0, 0, "eigsh goes dense", True)
  it = lobpcg_iterations(k, tol)
  s = 3 * k
  work = CostFeatures(flops=LOBPCG_STEP_FLOPS * m * s * s * it,
                      bytes_accessed=16.0 * m * s * it, transcendentals=0.0,
                      calls=LOBPCG_STEP_CALLS * it)
  # Per iteration A(XPR) with 3k columns and A(X) with k; before, A(X);
  # after, eigsh's residual check.
  return _FreePlan({s: it, k: it + 2}, work, it, 9 * k,
                   f"LOBPCG, {it} iterations of {s} + {k} columns")


def _lanczos_plan(m: int, rhs: int, tol: float) -> _FreePlan:
  """``matfun`` at its defaults: a basis of ``s = min(M, 200)`` vectors per
  column, reorthogonalised against in full (two passes) at every step, and
  the answer from ``eigh`` of the ``s × s`` tridiagonal matrix every
  ``CHECK_EVERY`` steps."""
  steps = lanczos_steps(m, tol)
  s = min(m, 200)
  checks = math.ceil(steps / lanczos.CHECK_EVERY)
  work = CostFeatures(
      flops=(8.0 * steps * s * m + EIGH_FLOPS * checks * s ** 3) * rhs,
      bytes_accessed=16.0 * steps * s * m * rhs, transcendentals=0.0,
      calls=steps + 2 * checks)
  return _FreePlan({rhs: steps}, work, steps, (s + 2) * rhs,
                   f"Lanczos, {steps} steps of {rhs} columns")


def _cg_plan(op: NtkOperator, m: int, rhs: int, tol: float,
             shift: float) -> _FreePlan:
  """Nyström-preconditioned CG (the solver's defaults): the sketch's
  products, one per growth step up to ``ℓ`` columns (:func:`sketch_rank`),
  then one product of the ``R`` columns per iteration."""
  trace = float(op.trace()) if shift > 0 else 0.0
  itemsize = np.dtype(op.dtype).itemsize
  rank = sketch_rank(m, rhs, tol, shift, trace, itemsize)
  steps = sketch_steps(m, shift, itemsize, rank)
  it = cg_iterations(m, tol, shift, trace, rank)
  factors = sum(np.cumsum(steps, dtype=np.float64) ** 2)
  work = CostFeatures(
      flops=4.0 * m * factors + it * (4.0 * m * rank + 10.0 * m) * rhs,
      bytes_accessed=8.0 * m * rank * (it + rank), transcendentals=0.0,
      calls=1 + len(steps))
  blocks = {rhs: it + 2}
  for columns in steps:
    blocks[columns] = blocks.get(columns, 0) + 1
  return _FreePlan(blocks, work, it, 5 * rhs + 2 * rank,
                   f"CG, {it} iterations of {rhs} columns after a rank-"
                   f"{rank} Nyström sketch")


def _harmonic(m: int, alpha: float = SPECTRUM_DECAY) -> float:
  """``Σ_{i≤M} i^(-α)``: the trace of the assumed spectrum over ``λ_1``."""
  return float(np.sum(np.arange(1, m + 1, dtype=np.float64) ** -alpha))


def lobpcg_iterations(k: int, tol: float,
                      alpha: float = SPECTRUM_DECAY) -> int:
  """LOBPCG's iterations for the top ``k`` pairs to a relative residual
  ``tol``: the ``k``-th pair's error contracts by
  ``ρ = ((1 − √ξ)/(1 + √ξ))²`` per iteration (Knyazev's bound), ``ξ`` the
  relative gap ``1 − λ_{k+1}/λ_k`` of the assumed spectrum
  ``λ_i ∝ i^(-α)``.

  >>> lobpcg_iterations(10, 1e-4)
  9
  """
  xi = 1.0 - (k / (k + 1)) ** alpha
  rho = ((1 - math.sqrt(xi)) / (1 + math.sqrt(xi))) ** 2
  return int(math.ceil(math.log(1 / tol) / math.log(1 / rho))) + 1


def cg_iterations(m: int, tol: float, shift: float, trace: float,
                  rank: int, alpha: float = SPECTRUM_DECAY) -> int:
  """Nyström-preconditioned CG's iterations to a relative residual
  ``tol`` as priced: :data:`CG_TYPICAL` times :func:`cg_bound` (at least
  1); without a shift, the solver's ``maxiter``.

  >>> cg_iterations(512, 1e-4, shift=1e-3, trace=512.0, rank=50)
  68
  """
  bound = cg_bound(m, tol, shift, trace, rank, alpha)
  if shift <= 0:
    return bound
  return max(1, math.ceil(CG_TYPICAL * bound))


def cg_bound(m: int, tol: float, shift: float, trace: float,
             rank: int, alpha: float = SPECTRUM_DECAY) -> int:
  """Nyström-preconditioned CG's iterations to a relative residual
  ``tol`` by the worst-case bound ``½·√κ·ln(2/tol)``, with the condition
  number ``κ = 1 + λ_ℓ / shift`` left after the rank-``ℓ`` preconditioner
  flattens the top ``ℓ`` eigenvalues, ``λ_ℓ`` from the trace and the
  assumed spectrum ``λ_i ∝ i^(-α)``. Capped at ``M`` (a Krylov space
  holds no more) and at the solver's ``maxiter``; without a shift, the
  ``maxiter``.

  >>> cg_bound(512, 1e-4, shift=1e-3, trace=512.0, rank=50)
  192
  """
  maxiter = min(10 * m, 1000)
  if shift <= 0:
    return maxiter
  lam = trace / _harmonic(m, alpha) * max(rank, 1) ** -alpha
  kappa = 1.0 + lam / shift
  it = int(math.ceil(0.5 * math.sqrt(kappa) * math.log(2 / tol)))
  return max(1, min(it, m, maxiter))


def sketch_rank(m: int, rhs: int, tol: float, shift: float, trace: float,
                itemsize: int = 4, alpha: float = SPECTRUM_DECAY) -> int:
  """The Nyström rank ``solve``'s ``rank="auto"`` reaches, on the assumed
  spectrum ``λ_i ∝ i^(-α)`` (scaled to ``trace``): the solver's own growth
  rule (:func:`autontk.solvers.preconditioners.pays`, which the solver
  reads from its sketch) fed that spectrum. Without a shift, 100.

  >>> sketch_rank(512, 1, 1e-4, shift=1e-3, trace=512.0)
  50
  >>> sketch_rank(512, 8, 1e-4, shift=1e-3, trace=512.0)
  256
  """
  rank, top = preconditioners.auto_ranks(m, shift, itemsize)
  lam = (trace / _harmonic(m, alpha) *
         np.arange(1, top + 1, dtype=np.float64) ** -alpha)
  while ((more := min(3 * rank, top - rank)) >= 1 and
         preconditioners.pays(lam[:rank], shift, more, rhs, tol)):
    rank += more
  return rank


def sketch_steps(m: int, shift: float, itemsize: int,
                 rank: int) -> list[int]:
  """The columns of each product the solver's ``rank="auto"`` sketch
  runs on its way to ``rank``: its first sketch, then each growth
  (:func:`autontk.solvers.preconditioners.nystrom`).

  >>> sketch_steps(512, 1e-3, 4, 256)
  [50, 150, 56]
  """
  first, top = preconditioners.auto_ranks(m, shift, itemsize)
  if rank < 1 or first < 1:
    return []
  steps, done = [first], first
  while done < min(rank, top):
    more = min(3 * done, top - done, rank - done)
    steps.append(more)
    done += more
  return steps


def lanczos_steps(m: int, tol: float) -> int:
  """Lanczos steps of a smooth function of the kernel (``exp(−τΘ)``) to a
  relative change ``tol``: ``10·log10(1/tol) + 20``, at most ``M``.

  >>> lanczos_steps(1000, 1e-6)
  80
  """
  return min(m, int(math.ceil(10 * math.log10(1 / tol))) + 20)


def _bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.3g} {unit}"
    n /= 1024
  return f"{n} B"
