"""Dense or matrix-free: which route answers a kernel question faster.

Given an :class:`~autontk.NtkOperator` and a question (one solve with ``R``
right-hand sides, a function of the kernel at many times, ``k``
eigenpairs), :func:`choose_route` prices both routes with the cost model's
time predictor and returns a :class:`RouteReport` saying which and why:

* **dense**: materialise the kernel with the best plan of
  :func:`autontk.ntk_fn` (priced from the plan on one batch of examples,
  scaled by the number of batch pairs, as ``ntk_tiled`` runs it), then one
  Cholesky (``M³/3`` FLOPs) or ``eigh`` (``9·M³``). Refused when the
  kernel, twice (matrix and factor), does not fit the memory budget.
* **matrix-free**: iterations × one product (the compiled product
  program's cost, per column). The iteration counts are estimates from the
  tolerance, not from the spectrum: preconditioned CG
  ``10·log10(1/tol)`` iterations plus a Nyström sketch of
  ``min(100, M/2)`` columns; Lanczos ``10·log10(1/tol) + 20`` steps;
  LOBPCG 50 iterations of ``3k`` columns.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from autontk.costmodel import hlo
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.predict import default_predictor
from autontk.operator import NtkOperator
from autontk.tiled.autotile import memory_budget_bytes

QUESTIONS = ("solve", "times", "eigsh")
"""``"solve"``: ``(Θ + λI)⁻¹ Y``; ``"times"``: ``fn(Θ) Y`` at many times
(gradient flow); ``"eigsh"``: ``k`` eigenpairs."""


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

  def __str__(self) -> str:
    return (f"route: {self.route} ({self.reason})\n"
            f"  dense:       {self.dense_seconds:.3g} s, "
            f"{self.dense_bytes / 2**20:.4g} MiB"
            f"{'' if self.dense_fits else ' (does not fit)'}\n"
            f"  matrix-free: {self.matrix_free_seconds:.3g} s, "
            f"{self.matrix_free_bytes / 2**20:.4g} MiB, "
            f"{self.products} column products\n"
            f"  budget:      {self.budget / 2**20:.4g} MiB")


def choose_route(op: NtkOperator, question: str = "solve", *, rhs: int = 1,
                 k: int = 10, tol: float = 1e-6,
                 memory_budget: int | None = None,
                 predictor: Any = None) -> RouteReport:
  """Prices the dense and matrix-free routes of ``question`` on ``op``.

  Args:
    op: the operator, from :func:`autontk.ntk_operator`.
    question: ``"solve"``, ``"times"`` or ``"eigsh"`` (:data:`QUESTIONS`).
    rhs: right-hand sides ``R`` (columns of ``Y``).
    k: eigenpairs, for ``"eigsh"``.
    tol: the solver tolerance the iterations are estimated from.
    memory_budget: bytes (default: half the first device's available
      memory).
    predictor: a :class:`~autontk.costmodel.TimePredictor` (default: the
      roofline of this device).

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
  if rhs < 1 or k < 1 or not 0 < tol < 1:
    raise ValueError("`rhs` and `k` must be positive and 0 < `tol` < 1.")
  predictor = predictor or default_predictor()
  budget = int(memory_budget if memory_budget is not None else
               memory_budget_bytes(jax.local_devices()[0]))
  m = op.shape[0]
  item = np.dtype(op.dtype).itemsize
  dense_bytes = 2 * m * m * item
  dense_s = _dense_seconds(op, question, rhs, predictor)
  products, vectors = _iterations(question, m, rhs, k, tol)
  product = hlo.analyse_compiled(op.lower(1).compile())
  free_s = products * predictor.predict(product)
  free_bytes = int(product.peak_memory or 0) + vectors * m * item
  fits = dense_bytes <= budget
  if not fits:
    route, reason = "matrix_free", (
        f"the dense kernel and its factor need {dense_bytes / 2**20:.4g} "
        f"MiB, over the budget")
  elif dense_s <= free_s:
    route, reason = "dense", (f"predicted {dense_s:.3g} s against "
                              f"{free_s:.3g} s matrix-free")
  else:
    route, reason = "matrix_free", (f"predicted {free_s:.3g} s against "
                                    f"{dense_s:.3g} s dense")
  return RouteReport(route, reason, dense_s, dense_bytes, fits, free_s,
                     free_bytes, products, budget)


def _dense_seconds(op: NtkOperator, question: str, rhs: int,
                   predictor: Any) -> float:
  """Kernel (from the best plan on one batch, scaled to every batch pair)
  plus the factorisation and its solves."""
  m, n, b = op.shape[0], op.layout.n, op.batch_size
  ntk, args, kwargs = op.kernel_call(b)
  report = ntk.report(*args, **kwargs)
  tile_s = predictor.predict(report.chosen_estimate.features)
  kernel_s = tile_s * (n / min(b, n)) ** 2
  flops = m ** 3 / 3 if question == "solve" else 9.0 * m ** 3
  flops += 2.0 * m * m * rhs
  factor = CostFeatures(flops=flops, bytes_accessed=8.0 * m * m,
                        transcendentals=0.0)
  return kernel_s + predictor.predict(factor)


def _iterations(question: str, m: int, rhs: int, k: int,
                tol: float) -> tuple[int, int]:
  """``(column products, stored vectors)`` of the matrix-free route."""
  digits = math.log10(1 / tol)
  if question == "solve":
    rank = min(100, m // 2)
    return int(math.ceil(10 * digits)) * rhs + rank, 5 * rhs + rank
  if question == "times":
    steps = min(m, int(math.ceil(10 * digits)) + 20)
    return steps * rhs, (steps + 2) * rhs
  return 50 * 3 * k, 9 * k
