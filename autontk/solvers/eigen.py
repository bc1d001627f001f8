"""``eigsh`` and ``max_eigenvalue``: extreme eigenpairs of a kernel operator.

The iteration is JAX's LOBPCG (``jax.experimental.sparse.linalg
.lobpcg_standard``), which finds the largest eigenpairs of a symmetric
operator with block products. It needs ``5·k < M``; smaller problems, and
``k`` that large, go dense (``to_dense`` and ``eigh``). The smallest
eigenpairs are the largest of ``c·I − Θ`` with ``c`` above ``λ_max``
(slow on kernels whose small eigenvalues cluster: prefer a shift and CG).
Convergence is checked on the residuals ``‖Θ u − λ u‖`` it returns.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.sparse.linalg import lobpcg_standard

from autontk.solvers import checks


def eigsh(op: Any, k: int, *, which: str = "largest", tol: float | None = None,
          maxiter: int = 200, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """The ``k`` largest (or smallest) eigenpairs of a symmetric operator.

  Each iteration costs one product with ``3·k`` columns at most.

  Args:
    op: a symmetric operator ``(M, M)``.
    k: the number of eigenpairs.
    which: ``"largest"`` or ``"smallest"``.
    tol: residual ``‖Θ u − λ u‖`` relative to ``λ_max`` at which the pairs
      count as converged (default: ``1e-4`` in float32, ``1e-8`` in
      float64).
    maxiter: LOBPCG iterations at most.
    seed: the seed of the initial block.

  Returns:
    ``(eigenvalues (k,) in descending order, eigenvectors (M, k))``.

  Warns:
    ConvergenceWarning: a residual is above ``tol`` after ``maxiter``.

  >>> import jax.numpy as jnp, autontk
  >>> op = autontk.MatrixOperator(jnp.diag(jnp.arange(1., 31.)))
  >>> w, _ = autontk.solvers.eigsh(op, 2)
  >>> [round(float(v), 3) for v in w]
  [30.0, 29.0]
  """
  m = checks.operator_size(op)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (
      1 <= k <= m):
    raise ValueError(f"`k` must be an int in 1..M={m}; got {k!r}.")
  if which not in ("largest", "smallest"):
    raise ValueError(f"`which` must be 'largest' or 'smallest'; got "
                     f"{which!r}.")
  dtype = jnp.dtype(op.dtype)
  tol = (1e-4 if dtype.itemsize <= 4 else 1e-8) if tol is None else (
      checks.check_scalar(tol, "tol", 0.0))
  if 5 * k >= m or m <= 32:
    return _dense(op, k, which)
  if which == "largest":
    w, u = _lobpcg(op.matmat, m, k, dtype, tol, maxiter, seed)
    top = jnp.max(w)
  else:
    top = max_eigenvalue(op, tol=tol, maxiter=maxiter, seed=seed)
    c = 1.01 * top + jnp.finfo(dtype).tiny
    w, u = _lobpcg(lambda v: c * v - op.matmat(v), m, k, dtype, tol, maxiter,
                   seed)
    w = c - w
  checks.check_finite(w, "The eigenvalues")
  scale = float(jnp.abs(top))
  residual = float(jnp.max(jnp.linalg.norm(op.matmat(u) - u * w, axis=0)))
  if residual > tol * max(scale, np.finfo(dtype).tiny):
    checks.warn_not_converged(f"eigsh (k={k}, {which})",
                              residual / max(scale, 1e-300), tol, maxiter)
  order = jnp.argsort(-w)
  return w[order], u[:, order]


def max_eigenvalue(op: Any, *, tol: float | None = None, maxiter: int = 200,
                   seed: int = 0) -> jax.Array:
  """The largest eigenvalue ``λ_max`` (e.g. for the largest stable learning
  rate ``2/λ_max``).

  Args:
    op: a symmetric operator ``(M, M)``.
    tol: as for :func:`eigsh`.
    maxiter: as for :func:`eigsh`.
    seed: as for :func:`eigsh`.

  Returns:
    A scalar.

  >>> import jax.numpy as jnp, autontk
  >>> op = autontk.MatrixOperator(jnp.diag(jnp.arange(1., 4.)))
  >>> float(autontk.solvers.max_eigenvalue(op))
  3.0
  """
  w, _ = eigsh(op, 1, tol=tol, maxiter=maxiter, seed=seed)
  return w[0]


def _dense(op: Any, k: int, which: str) -> tuple[jax.Array, jax.Array]:
  a = jnp.asarray(op.to_dense())
  checks.check_finite(a, "The kernel")
  w, u = jnp.linalg.eigh((a + a.T) / 2)
  pick = slice(-k, None) if which == "largest" else slice(0, k)
  w, u = w[pick], u[:, pick]
  order = jnp.argsort(-w)
  return w[order], u[:, order]


def _lobpcg(matmat: Any, m: int, k: int, dtype: Any, tol: float,
            maxiter: int, seed: int) -> tuple[jax.Array, jax.Array]:
  x0 = jax.random.normal(jax.random.key(seed), (m, k), dtype)
  # lobpcg's own test: ‖r‖ < tol' · 10 · M · (λ + ‖Θu‖); tol' · 20 M ≈ tol
  # asks for a residual of about tol · λ.
  w, u, _ = lobpcg_standard(matmat, x0, m=maxiter, tol=tol / (20 * m))
  return w, u
