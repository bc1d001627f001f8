"""``solve``: preconditioned conjugate gradients on ``(Θ + shift·I) x = b``.

The iteration is JAX's own (``jax.scipy.sparse.linalg.cg``), one run per
right-hand side under ``jax.vmap`` (each column stops at its own
tolerance), compiled with the operator's products inside. JAX's ``cg``
reports neither iterations nor convergence, so both are read here: a
callback counts products (and drives the progress bar), and the residual is
recomputed from the answer.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk.solvers import checks, preconditioners


def solve(op: Any, b: Any, *, shift: float = 0.0, tol: float = 1e-6,
          maxiter: int | None = None,
          preconditioner: str | Callable | None = "auto",
          rank: int | str = "auto", x0: Any = None,
          progress: bool | None = None, seed: int = 0,
          return_info: bool = False,
          checkpoint: str | os.PathLike | None = None,
          segment: int = 100) -> Any:
  """Solves ``(op + shift·I) x = b`` by preconditioned CG.

  Each iteration costs one product of ``op`` with the ``R`` columns of
  ``b``. On NTKs plain CG is slow (fast-decaying spectra); the default
  Nyström preconditioner, built from one product with ``rank`` columns,
  usually brings it to tens of iterations (``docs/operator.md`` shows the
  counts).

  Args:
    op: a symmetric PSD operator ``(M, M)`` (:class:`autontk.NtkOperator`,
      :class:`autontk.MatrixOperator`).
    b: right-hand sides, ``(M,)`` or ``(M, R)``.
    shift: added to the diagonal (a ridge, ``diag_reg``).
    tol: relative residual ``‖b − A x‖ / ‖b‖`` at which a column stops.
    maxiter: iterations at most (default ``min(10·M, 1000)``).
    preconditioner: ``"auto"`` (Nyström), ``"nystrom"``, ``"diag"``
      (Jacobi), ``None``, or a callable ``v -> P⁻¹ v`` on ``(M,)`` vectors.
    rank: the Nyström rank, or ``"auto"`` (``min(100, M // 2)``).
    x0: an initial guess shaped like ``b``.
    progress: a progress bar of iterations: ``True``, ``False``, or
      ``None`` (shown once the solve has taken a second).
    seed: the Nyström sketch's seed.
    return_info: also return a :class:`SolveInfo`.
    checkpoint: a directory: CG runs in segments of ``segment``
      iterations, saving ``x`` after each (``cg.npz``); a later call with
      the same ``b`` resumes from the saved ``x``. Each segment restarts CG
      from its ``x`` (the search directions are lost): expect a few more
      iterations than one run.
    segment: iterations per segment with ``checkpoint``.

  Returns:
    ``x``, shaped like ``b`` (and its :class:`SolveInfo` with
    ``return_info``).

  Warns:
    ConvergenceWarning: a column's relative residual is above ``10·tol``
      (the message gives it).

  >>> import jax.numpy as jnp, autontk
  >>> op = autontk.MatrixOperator(jnp.diag(jnp.arange(1., 5.)))
  >>> autontk.solvers.solve(op, jnp.ones(4), preconditioner=None)
  Array([1.        , 0.5       , 0.33333334, 0.25      ], dtype=float32)
  """
  cols, vector = checks.columns(op, b)
  m = cols.shape[0]
  shift = checks.check_scalar(shift, "shift")
  tol = checks.check_scalar(tol, "tol", 0.0)
  maxiter = min(10 * m, 1000) if maxiter is None else int(maxiter)
  guess = jnp.zeros_like(cols) if x0 is None else checks.columns(
      op, x0, "x0")[0]
  precond = preconditioners.make(op, preconditioner, rank, shift, seed)
  system = _System(op, shift, tol, precond)
  with checks.progress_bar(maxiter, "CG", progress) as bar:
    if checkpoint is None:
      x, iterations = system.run(cols, guess, maxiter, bar)
    else:
      x, iterations = _segments(system, cols, guess, maxiter, segment,
                                os.path.join(os.fspath(checkpoint), "cg.npz"),
                                bar)
  checks.check_finite(x, "The solution")
  residual = system.residual(cols, x)
  checks.check_finite(jnp.asarray(residual), "The residual")
  if residual > 10 * tol:
    checks.warn_not_converged("CG", residual, tol, iterations)
  x = x[:, 0] if vector else x
  if return_info:
    return x, SolveInfo(iterations, residual, residual <= 10 * tol)
  return x


@dataclasses.dataclass(frozen=True)
class SolveInfo:
  """How a :func:`solve` went.

  Attributes:
    iterations: CG iterations (of the slowest column).
    residual: the largest relative residual ``‖b − A x‖ / ‖b‖``,
      recomputed from ``x``.
    converged: ``residual <= 10·tol``.
  """

  iterations: int
  residual: float
  converged: bool


@dataclasses.dataclass
class _System:
  """``(op + shift·I) x = b`` with its tolerance and preconditioner."""

  op: Any
  shift: float
  tol: float
  precond: Callable | None

  def apply(self, v: Any) -> Any:
    return self.op.matmat(v) + self.shift * v

  def residual(self, cols: Any, x: Any) -> float:
    return checks.relative(cols - self.apply(x), cols)

  def run(self, cols: Any, guess: Any, maxiter: int,
          bar: Any) -> tuple[jax.Array, int]:
    """JAX's CG on every column; ``(x, iterations)``."""
    count = [-1]  # the first product is the initial residual's

    def tick():
      count[0] += 1
      if count[0] > 0:
        bar.update(1)

    def a(v):
      jax.debug.callback(tick)
      return self.apply(v)

    def one(bc, x0):
      x, _ = jax.scipy.sparse.linalg.cg(a, bc, x0, tol=self.tol, atol=0.0,
                                        maxiter=maxiter, M=self.precond)
      return x

    x = jax.jit(jax.vmap(one, in_axes=1, out_axes=1))(cols, guess)
    x.block_until_ready()
    jax.effects_barrier()
    return x, max(count[0], 0)


def _segments(system: _System, cols: Any, x: Any, maxiter: int,
              segment: int, path: str, bar: Any) -> tuple[jax.Array, int]:
  """CG in restarted segments, ``x`` saved to ``path`` after each."""
  done = 0
  if os.path.exists(path):
    with np.load(path) as saved:
      if np.array_equal(saved["b"], np.asarray(cols)):
        x, done = jnp.asarray(saved["x"], cols.dtype), int(saved["done"])
        bar.update(done)
  while done < maxiter and system.residual(cols, x) > system.tol:
    x, iterations = system.run(cols, x, min(segment, maxiter - done), bar)
    done += iterations
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, b=np.asarray(cols), x=np.asarray(x), done=done)
    os.replace(tmp, path)
    if iterations == 0:
      break
  return x, done
