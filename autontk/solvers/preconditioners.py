"""Preconditioners for CG on ``(Θ + shift·I) x = b``.

NTKs have fast-decaying spectra: a few large eigenvalues, then a long tail,
so plain CG needs many iterations (its rate depends on
``√(λ_max / (λ_min + shift))``). A randomized Nyström approximation of rank
ℓ captures the top of the spectrum from one product with ℓ columns; the
preconditioner built from it (Frangella, Tropp & Udell, "Randomized Nyström
preconditioning", SIAM J. Matrix Anal. Appl. 2023) flattens the top ℓ
eigenvalues to the level of the ℓ-th, leaving CG the tail. The diagonal
(Jacobi) preconditioner costs only ``diag()`` and helps when examples have
very different kernel norms.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp

from autontk.solvers.checks import ConvergenceWarning

AUTO_RANK = 100
"""Nyström rank of ``preconditioner="auto"`` (at most half of M)."""


def nystrom(op: Any, rank: int, shift: float, key: Any) -> Callable | None:
  """The Nyström preconditioner ``v -> P⁻¹ v`` of rank ``rank``.

  Costs one product of ``op`` with ``rank`` columns and an SVD of an
  ``(M, rank)`` matrix. ``None`` when the sketch shows the operator is not
  positive semi-definite (with a warning).

  Args:
    op: the operator, ``(M, M)``.
    rank: the sketch's rank ℓ (< M).
    shift: the shift of the system.
    key: a PRNG key for the sketch.
  """
  m = op.shape[0]
  omega, _ = jnp.linalg.qr(jax.random.normal(key, (m, rank), op.dtype))
  y = op.matmat(omega)
  nu = jnp.finfo(op.dtype).eps * jnp.linalg.norm(y)
  y = y + nu * omega
  c = jnp.linalg.cholesky(omega.T @ y)
  if not bool(jnp.all(jnp.isfinite(c))):
    warnings.warn("The Nyström sketch is not positive definite (is the "
                  "kernel PSD?); solving without a preconditioner.",
                  ConvergenceWarning, stacklevel=3)
    return None
  b = jax.scipy.linalg.solve_triangular(c, y.T, lower=True).T
  u, s, _ = jnp.linalg.svd(b, full_matrices=False)
  lam = jnp.maximum(s ** 2 - nu, 0.0)
  low = lam[-1] + shift
  weights = jnp.where(low > 0, low / (jnp.maximum(lam, lam[-1]) + shift),
                      1.0)

  def apply(v):
    p = u.T @ v
    return u @ (weights * p) + (v - u @ p)

  return apply


def jacobi(op: Any, shift: float) -> Callable:
  """``v -> v / (diag(Θ) + shift)``."""
  d = jnp.asarray(op.diag()) + shift
  if not bool(jnp.all(d > 0)):
    raise ValueError("The diagonal preconditioner needs diag(Θ) + shift > 0; "
                     f"its smallest entry is {float(jnp.min(d)):.3g}.")
  return lambda v: v / d


def make(op: Any, kind: Any, rank: int | str, shift: float,
         seed: int) -> Callable | None:
  """The preconditioner ``kind`` names: ``"auto"`` / ``"nystrom"``,
  ``"diag"``, ``None``, or a callable ``v -> P⁻¹ v`` passed through."""
  if kind is None:
    return None
  if callable(kind):
    return kind
  m = op.shape[0]
  if kind in ("auto", "nystrom"):
    if rank == "auto":
      rank = min(AUTO_RANK, m // 2)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
      raise ValueError(f"`rank` must be 'auto' or a non-negative int; got "
                       f"{rank!r}.")
    if rank < 1 or rank >= m:
      return None
    return nystrom(op, rank, shift, jax.random.key(seed))
  if kind == "diag":
    return jacobi(op, shift)
  raise ValueError(f"`preconditioner` must be 'auto', 'nystrom', 'diag', "
                   f"None or a callable; got {kind!r}.")
