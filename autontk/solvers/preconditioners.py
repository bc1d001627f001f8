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

import functools
import math
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk.solvers.checks import ConvergenceWarning

AUTO_RANK = 100
"""Nyström rank of ``rank="auto"`` without a shift (at most half of M)."""

SHIFT_RANK = 50
"""The first sketch of ``rank="auto"`` with a shift (at most half of M)."""

MAX_AUTO_RANK = 800
"""The largest sketch of ``rank="auto"`` (also at most half of M and 256 MiB
of sketch)."""


Preconditioner = tuple[Callable[[Any, Any], Any], Any]
"""``(apply, parts)``: ``apply(parts, v)`` is ``P⁻¹ v``. ``apply`` is a
module-level function and ``parts`` its arrays, so a compiled solve takes
``parts`` as arguments and is reused by the next solve on the same
operator."""


def nystrom(op: Any, rank: int | str, shift: float, key: Any,
            columns: int = 1, tol: float = 1e-6) -> Preconditioner | None:
  """The Nyström preconditioner ``v -> P⁻¹ v`` (as ``(apply, parts)``).

  Costs products of ``op`` with ``rank`` columns in all and ``O(M·rank²)``
  for the factors. ``None`` when the sketch shows the operator is not
  positive semi-definite (with a warning).

  ``rank="auto"`` with a shift starts from 50 columns and grows the sketch
  4× while that pays: when the CG iterations it is predicted to save, times
  the ``columns`` solved for, exceed the columns it adds. The prediction
  reads ``(λ_ℓ + shift) / shift`` as the condition number left to CG
  (``½·√κ·ln(2/tol)`` iterations) and extrapolates ``λ_4ℓ`` from the
  sketch's decay as a power law. Without a shift the rank is
  :data:`AUTO_RANK`.

  Args:
    op: the operator, ``(M, M)``.
    rank: the sketch's rank ℓ (< M), or ``"auto"``.
    shift: the shift of the system.
    key: a PRNG key for the sketch.
    columns: right-hand sides solved for (``rank="auto"``).
    tol: the solve's tolerance (``rank="auto"``).
  """
  m = op.shape[0]
  top = rank
  if rank == "auto":
    rank, top = auto_ranks(m, shift, jnp.dtype(op.dtype).itemsize)
  if rank < 1:
    return None
  raw = jax.random.normal(key, (m, rank), op.dtype)
  y_raw = op.matmat(raw)
  while True:
    factors = _factors(raw, y_raw)
    more = min(3 * rank, top - rank)
    if factors is None or more < 1 or not pays(factors[1], shift, more,
                                               columns, tol):
      break
    key, sub = jax.random.split(key)
    new = jax.random.normal(sub, (m, more), op.dtype)
    raw = jnp.concatenate([raw, new], axis=1)
    y_raw = jnp.concatenate([y_raw, op.matmat(new)], axis=1)
    rank += more
  if factors is None:
    warnings.warn("The Nyström sketch is not positive definite (is the "
                  "kernel PSD?); solving without a preconditioner.",
                  ConvergenceWarning, stacklevel=3)
    return None
  u, lam = factors
  low = _smallest_kept(lam) + shift
  weights = jnp.where(low > 0, low / (jnp.maximum(lam, low - shift) + shift),
                      1.0)
  return _nystrom_apply, (u, weights)


def _nystrom_apply(parts: tuple[Any, Any], v: Any) -> Any:
  u, weights = parts
  p = u.T @ v
  return u @ (weights * p) + (v - u @ p)


def sketch_rank(precond: Preconditioner | None) -> int:
  """Columns of the Nyström sketch behind ``precond`` (0 for any other
  preconditioner, or none)."""
  if precond is None or precond[0] is not _nystrom_apply:
    return 0
  return int(precond[1][0].shape[1])


def _factors(raw: Any, y_raw: Any) -> tuple[Any, Any] | None:
  """``(U, λ)`` (λ descending) of the Nyström approximation from the
  sketch ``Y = Θ Ω``, or ``None`` when not positive definite."""
  u, lam, ok = _factor_program(raw, y_raw)
  return (u, lam) if bool(ok) else None


@jax.jit
def _factor_program(raw: Any, y_raw: Any) -> tuple[Any, Any, Any]:
  """:func:`_factors`, compiled once per rank, with an ``ok`` flag.

  ``Ω`` is orthonormalised by Cholesky-QR (``Q = Ω L⁻ᵀ``, so ``Θ Q =
  Y L⁻ᵀ``), and the SVD of the ``(M, ℓ)`` factor ``B`` is read from the
  ``ℓ × ℓ`` eigenproblem of ``BᵀB``: matrix products only over ``M``.
  Directions too small for that (``σ² < 10³·eps·σ²_max``) are dropped.
  """
  eps = jnp.finfo(raw.dtype).eps
  l = jnp.linalg.cholesky(raw.T @ raw)
  q = jax.scipy.linalg.solve_triangular(l, raw.T, lower=True).T
  y = jax.scipy.linalg.solve_triangular(l, y_raw.T, lower=True).T
  nu = eps * jnp.linalg.norm(y)
  y = y + nu * q
  c = jnp.linalg.cholesky((q.T @ y + y.T @ q) / 2)
  ok = jnp.all(jnp.isfinite(c))
  b = jax.scipy.linalg.solve_triangular(c, y.T, lower=True).T
  s2, v = jnp.linalg.eigh(b.T @ b)
  s2, v = s2[::-1], v[:, ::-1]
  keep = s2 > 1e3 * eps * s2[0]
  u = jnp.where(keep, (b @ v) / jnp.sqrt(jnp.where(keep, s2, 1.0)), 0.0)
  lam = jnp.where(keep, jnp.maximum(s2 - nu, 0.0), 0.0)
  return u, lam, ok


def auto_ranks(m: int, shift: float, itemsize: int) -> tuple[int, int]:
  """``(first, largest)``: the sketch ranks ``rank="auto"`` starts from
  and may grow to, for an ``(M, M)`` operator of ``itemsize``-byte
  entries."""
  first = min(SHIFT_RANK if shift > 0 else AUTO_RANK, m // 2)
  if shift <= 0:
    return first, first
  return first, min(MAX_AUTO_RANK, m // 2, 2 ** 28 // (m * itemsize))


def pays(lam: Any, shift: float, more: int, columns: int,
         tol: float) -> bool:
  """Whether ``more`` sketch columns save more column products in CG, read
  from the sketch's eigenvalues ``lam`` (descending)."""
  lam = np.asarray(lam, np.float64)
  lam = lam[lam > 0]
  if lam.size < 8:
    return False
  now, earlier = lam[-1], lam[(lam.size - 1) // 4]
  later = now * now / earlier  # power-law decay from index ℓ/4 to ℓ, to 4ℓ

  def iterations(level):
    return 0.5 * math.sqrt((level + shift) / shift) * math.log(2 / tol)

  return columns * (iterations(now) - iterations(later)) > more


def _smallest_kept(lam: Any) -> Any:
  """The smallest positive ``λ`` (the level the top is flattened to)."""
  return jnp.min(jnp.where(lam > 0, lam, jnp.max(lam)))


def jacobi(op: Any, shift: float) -> Preconditioner:
  """``v -> v / (diag(Θ) + shift)`` (as ``(apply, parts)``)."""
  d = jnp.asarray(op.diag()) + shift
  if not bool(jnp.all(d > 0)):
    raise ValueError("The diagonal preconditioner needs diag(Θ) + shift > 0; "
                     f"its smallest entry is {float(jnp.min(d)):.3g}.")
  return _jacobi_apply, d


def _jacobi_apply(d: Any, v: Any) -> Any:
  return v / d


def _user_apply(fn: Callable, parts: Any, v: Any) -> Any:
  del parts  # a user's callable holds its own arrays
  return fn(v)


def make(op: Any, kind: Any, rank: int | str, shift: float, seed: int,
         columns: int = 1, tol: float = 1e-6) -> Preconditioner | None:
  """The preconditioner ``kind`` names, as ``(apply, parts)``: ``"auto"`` /
  ``"nystrom"``, ``"diag"``, ``None``, or a callable ``v -> P⁻¹ v`` (its
  ``apply`` is then the callable itself, so a solve is compiled for it)."""
  if kind is None:
    return None
  if callable(kind):
    return functools.partial(_user_apply, kind), ()
  m = op.shape[0]
  if kind in ("auto", "nystrom"):
    if rank != "auto" and (not isinstance(rank, int) or
                           isinstance(rank, bool) or rank < 0):
      raise ValueError(f"`rank` must be 'auto' or a non-negative int; got "
                       f"{rank!r}.")
    if rank != "auto" and (rank < 1 or rank >= m):
      return None
    return nystrom(op, rank, shift, jax.random.key(seed), columns, tol)
  if kind == "diag":
    return jacobi(op, shift)
  raise ValueError(f"`preconditioner` must be 'auto', 'nystrom', 'diag', "
                   f"None or a callable; got {kind!r}.")
