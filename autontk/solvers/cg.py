"""``solve``: preconditioned conjugate gradients on ``(Θ + shift·I) x = b``.

The iteration is JAX's own (``jax.scipy.sparse.linalg.cg``), one run per
right-hand side under ``jax.vmap`` (each column stops at its own
tolerance), compiled with the operator's products inside. The compiled
program is kept with the operator (the shift, the tolerance and the
preconditioner's arrays are its arguments), so a second solve on the same
operator and shapes does not compile again. JAX's ``cg`` reports neither
iterations nor convergence, so both are read here: a callback counts
products (and drives the progress bar), and the residual is recomputed from
the answer.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk.solvers import checks, preconditioners


def solve(op: Any, b: Any, *, shift: float = 0.0, tol: float | None = None,
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
    tol: relative residual ``‖b − A x‖ / ‖b‖`` at which a column stops
      (default: ``1e-5`` for a single-precision operator, whose products
      round at about that level on kernels of a few thousand examples, and
      ``1e-6`` otherwise).
    maxiter: iterations at most (default ``min(10·M, 1000)``).
    preconditioner: ``"auto"`` (Nyström), ``"nystrom"``, ``"diag"``
      (Jacobi), ``None``, or a callable ``v -> P⁻¹ v`` on ``(M,)`` vectors.
    rank: the Nyström rank, or ``"auto"``: from 50 columns, grown while
      the iterations it saves (for all columns of ``b``) outweigh its
      cost (:func:`autontk.solvers.preconditioners.nystrom`).
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
  if tol is None:
    tol = 1e-5 if jnp.dtype(op.dtype).itemsize <= 4 else 1e-6
  tol = checks.check_scalar(tol, "tol", 0.0)
  maxiter = min(10 * m, 1000) if maxiter is None else int(maxiter)
  guess = jnp.zeros_like(cols) if x0 is None else checks.columns(
      op, x0, "x0")[0]
  precond = preconditioners.make(op, preconditioner, rank, shift, seed,
                                 cols.shape[1], max(tol, 1e-12))
  system = _System(op, shift, tol, precond)
  with checks.progress_bar(maxiter, "CG", progress) as bar:
    if checkpoint is None:
      x, iterations = system.run(cols, guess, maxiter, bar)
    else:
      x, iterations = _segments(system, cols, guess, maxiter, segment,
                                os.path.join(os.fspath(checkpoint), "cg.npz"),
                                bar)
  info = _check(system, cols, x, iterations)
  x = x[:, 0] if vector else x
  return (x, info) if return_info else x


@dataclasses.dataclass(frozen=True)
class SolveInfo:
  """How a :func:`solve` went.

  Attributes:
    iterations: CG iterations (of the slowest column).
    residual: the largest relative residual ``‖b − A x‖ / ‖b‖``,
      recomputed from ``x``.
    converged: ``residual <= 10·tol``.
    rank: columns of the Nyström sketch the preconditioner was built
      from (``rank="auto"``: the rank its growth reached); 0 without a
      Nyström preconditioner.
  """

  iterations: int
  residual: float
  converged: bool
  rank: int = 0


def _check(system: "_System", cols: Any, x: Any,
           iterations: int) -> "SolveInfo":
  """The solve's :class:`SolveInfo`; raises on a non-finite answer, warns
  on one above ``10·tol``."""
  checks.check_finite(x, "The solution")
  residual = system.residual(cols, x)
  checks.check_finite(jnp.asarray(residual), "The residual")
  tol = system.tol
  if residual > 10 * tol:
    what = "CG" if jnp.dtype(cols.dtype).itemsize > 4 else (
        "CG (in float32 the reachable residual is about 1e-7 · λ_max / "
        "shift)")
    checks.warn_not_converged(what, residual, tol, iterations, stacklevel=4)
  return SolveInfo(iterations, residual, residual <= 10 * tol,
                   preconditioners.sketch_rank(system.precond))


@dataclasses.dataclass
class _System:
  """``(op + shift·I) x = b`` with its tolerance and preconditioner."""

  op: Any
  shift: float
  tol: float
  precond: preconditioners.Preconditioner | None

  def apply(self, v: Any) -> Any:
    return self.op.matmat(v) + self.shift * v

  def residual(self, cols: Any, x: Any) -> float:
    return checks.relative(cols - self.apply(x), cols)

  def run(self, cols: Any, guess: Any, maxiter: int,
          bar: Any) -> tuple[jax.Array, int]:
    """JAX's CG on every column; ``(x, iterations)``."""
    apply, parts = self.precond or (None, ())
    program = _program(self.op, maxiter, apply)
    _Progress.count, _Progress.bar = -1, bar
    try:
      x = program(cols, guess, jnp.asarray(self.shift, cols.dtype),
                  jnp.asarray(self.tol, cols.dtype), parts)
      x.block_until_ready()
      jax.effects_barrier()
      return x, max(_Progress.count, 0)
    finally:
      _Progress.bar = None


class _Progress:
  """The bar of the solve in progress: the compiled programs' callback
  counts products here (the first is the initial residual's)."""

  count = -1
  bar: Any = None


def _tick() -> None:
  _Progress.count += 1
  if _Progress.count > 0 and _Progress.bar is not None:
    _Progress.bar.update(1)


def _program(op: Any, maxiter: int, apply: Callable | None) -> Callable:
  """The compiled CG of ``op`` (vmapped over columns), kept in the
  operator's ``__dict__`` per ``maxiter`` and preconditioner kind (not kept
  for an operator without one)."""
  key = (maxiter, (apply.func, apply.args)
         if isinstance(apply, functools.partial) else apply)
  programs = getattr(op, "__dict__", {}).setdefault(
      "_autontk_cg_programs", {})
  if key not in programs:
    products = _side_by_side(op)

    def one(bc, x0, shift, tol, parts):
      def a(v):
        jax.debug.callback(_tick)
        return products(v) + shift * v

      m = None if apply is None else functools.partial(apply, parts)
      x, _ = jax.scipy.sparse.linalg.cg(a, bc, x0, tol=tol, atol=0.0,
                                        maxiter=maxiter, M=m)
      return x

    programs[key] = jax.jit(jax.vmap(one, in_axes=(1, 1, None, None, None),
                                     out_axes=1))
  return programs[key]


def _side_by_side(op: Any) -> Callable:
  """``v -> op.matmat(v)`` on ``(M,)`` vectors, where ``vmap`` over the
  columns (one CG per column) becomes one product with the columns side by
  side: the operator sees all of them at once (an NTK operator may then
  contract per-example Jacobians with every column)."""
  @jax.custom_batching.custom_vmap
  def products(v):
    return op.matmat(v)

  @products.def_vmap
  def _(axis_size, in_batched, v):
    del axis_size, in_batched  # the only operand, batched on axis 0
    return op.matmat(v.T).T, True

  return products


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
