"""Lanczos: the one implementation behind ``matfun`` and the diagnostics.

JAX has no Lanczos (``jax.scipy.sparse.linalg`` has CG, GMRES and BiCGStab,
``jax.experimental.sparse.linalg`` LOBPCG), so this is a small one. One
step (:func:`_extend`, compiled) takes ``w = A q_j`` for every column of a
block at once, removes ``α_j q_j + β_{j-1} q_{j-1}`` and, with full
reorthogonalisation, the whole basis twice (exact enough for the ≤ a few
hundred steps these functions need); a column whose Krylov space is
exhausted stops (``β = 0``, its later vectors zero). The tridiagonal ``T =
Qᵀ A Q`` of each column is diagonalised by ``jnp.linalg.eigh`` (its Ritz
pairs, :func:`ritz`), which serves three uses:

* :func:`matfun`: ``fn(A) b ≈ ‖b‖ Q fn(T) e₁`` (gradient-flow
  predictions), with ``fn`` on ``T``'s eigenvalues; it may return a leading
  batch axis, so one run gives ``exp(−τ_k Θ) b`` for every time ``τ_k``.
  The loop runs in Python, one compiled step per product: it reports
  progress, stops when the answer changes less than ``tol`` between checks,
  and can checkpoint its state to a directory and resume from it;
* :func:`quadrature`: ``vᵀ f(A) v ≈ ‖v‖² Σ τ_i² f(θ_i)`` (Gauss quadrature
  on the Ritz values ``θ`` with the first components ``τ``), the quadratic
  forms of stochastic Lanczos quadrature;
* extreme eigenvalues: the Ritz values at the ends of the spectrum, each
  within ``|β_s u_s|`` (the last component of its eigenvector times the
  last ``β``) of an eigenvalue of ``A``.

:func:`tridiagonalize` runs the steps for a product given as any function
(a host function in float64 too: a float64 start block keeps the run in
float64).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk.solvers import checks

CHECK_EVERY = 5
"""Steps between convergence checks (each an eigendecomposition of T)."""

REORTHOGONALIZE_BYTES = 2 ** 28
""":func:`tridiagonalize` keeps its basis for full reorthogonalisation up to
this size (256 MiB); past it, runs use the three-term recurrence alone,
which Gauss quadrature tolerates (its ghost Ritz values carry the weight of
the eigenvalue they copy)."""


def tridiagonalize(matmat: Callable[[Any], Any], v0: Any, steps: int, *,
                   reorthogonalize: bool | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """``steps`` Lanczos steps from each column of ``v0`` at once.

  Each step costs one product with the ``R`` columns and, with full
  reorthogonalisation, ``O(steps · M · R)``.

  Args:
    matmat: ``V (M, R) -> A V`` for a symmetric ``A``; it is given a JAX
      array of ``v0``'s dtype and may return any array (a host function
      may compute in NumPy).
    v0: ``(M, R)`` start vectors (nonzero columns). Float64 keeps the run
      in float64 whether or not ``jax_enable_x64`` is set.
    steps: Krylov steps, in ``1..M``.
    reorthogonalize: full reorthogonalisation against the whole basis
      (default: while the basis, ``steps · M · R`` floats, fits
      :data:`REORTHOGONALIZE_BYTES`).

  Returns:
    ``alpha (R, steps)`` and ``beta (R, steps)``, NumPy: ``T``'s diagonal
    and off-diagonal (``beta[:, j]`` couples steps ``j`` and ``j + 1``; the
    last is the residual norm); a column whose Krylov space is exhausted
    has zeros from there on.

  >>> import numpy as np
  >>> a = np.diag([1.0, 2.0, 3.0])
  >>> alpha, beta = tridiagonalize(lambda v: a @ np.asarray(v),
  ...                              np.ones((3, 1)), 3)
  >>> np.round(ritz(alpha, beta)[0], 6)
  array([[1., 2., 3.]])
  """
  v0 = v0 if hasattr(v0, "dtype") else np.asarray(v0, np.float64)
  m, r = v0.shape
  if not 1 <= steps <= m:
    raise ValueError(f"`steps` must be in 1..M={m}; got {steps}.")
  dtype = np.dtype(v0.dtype)
  full = (steps * m * r * dtype.itemsize <= REORTHOGONALIZE_BYTES
          if reorthogonalize is None else bool(reorthogonalize))
  with _precision(dtype):
    arrays = _start(jnp.asarray(v0, dtype), steps, full)
  for j in range(steps):
    with _precision(dtype):
      qj = _vector(arrays, j)
    w = matmat(qj)
    with _precision(dtype):
      arrays = _extend(arrays, jnp.asarray(w, dtype), j, full)
      if not bool(jnp.any(arrays[2][j] != 0)):
        break  # every column's Krylov space is exhausted
  alpha, beta = (np.asarray(a).T for a in arrays[1:])
  return alpha, beta


def ritz(alpha: Any, beta: Any) -> tuple[np.ndarray, np.ndarray]:
  """Eigen-decompositions of Lanczos tridiagonals (one batched
  ``jnp.linalg.eigh``).

  Args:
    alpha: ``(..., s)``, the diagonals.
    beta: ``(..., s)``, the off-diagonals (the last entry is not part of
      ``T``).

  Returns:
    ``theta (..., s)`` ascending and ``u (..., s, s)`` (columns), NumPy.

  >>> import numpy as np
  >>> theta, _ = ritz(np.array([2.0, 2.0]), np.array([1.0, 0.0]))
  >>> theta
  array([1., 3.])
  """
  alpha, beta = np.asarray(alpha), np.asarray(beta)
  with _precision(alpha.dtype):
    theta, u = _eigh(jnp.asarray(alpha), jnp.asarray(beta))
    return np.asarray(theta), np.asarray(u)


def quadrature(alpha: Any, beta: Any, norms: Any,
               fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """``vᵀ f(A) v`` per Lanczos run by Gauss quadrature: ``‖v‖² Σ τ_i²
  f(θ_i)`` over the Ritz values ``θ`` and first components ``τ``.

  Args:
    alpha: ``(R, s)`` from :func:`tridiagonalize`.
    beta: ``(R, s)``.
    norms: ``(R,)``, the start vectors' norms ``‖v‖``.
    fn: ``f``, on NumPy arrays of eigenvalues.

  Returns:
    ``(R,)``.

  >>> import numpy as np
  >>> a = np.diag([1.0, 4.0])
  >>> alpha, beta = tridiagonalize(lambda v: a @ np.asarray(v),
  ...                              np.ones((2, 1)), 2)
  >>> quadrature(alpha, beta, np.sqrt([2.0]), np.sqrt)
  array([3.])
  """
  theta, u = ritz(alpha, beta)
  return np.asarray(norms) ** 2 * np.sum(u[..., 0, :] ** 2 * fn(theta),
                                         axis=-1)


def _precision(dtype: Any) -> Any:
  """A float64 run needs ``jax_enable_x64``: on for its own steps only."""
  if np.dtype(dtype) == np.float64:
    return jax.enable_x64(True)
  return contextlib.nullcontext()


def matfun(op: Any, b: Any, fn: Callable[[jax.Array], jax.Array], *,
           shift: float = 0.0, steps: int | None = None, tol: float = 1e-6,
           progress: bool | None = None,
           checkpoint: str | os.PathLike | None = None) -> jax.Array:
  """``fn(op + shift·I) b`` by Lanczos with full reorthogonalisation.

  Each step costs one product of ``op`` with the ``R`` columns of ``b`` and
  ``O(step · M · R)`` for the reorthogonalisation. Smooth functions of a
  PSD kernel (``exp(−τΘ)``, ``(1 − e^{−τΘ})/Θ``) converge in tens of steps.

  Args:
    op: a symmetric operator ``(M, M)``.
    b: ``(M,)`` or ``(M, R)``.
    fn: maps eigenvalues ``λ`` of shape ``(m,)`` to ``(*batch, m)``, with
      JAX operations; it must be finite on ``[λ_min, λ_max]`` (e.g. write
      ``(1 − e^{−τλ})/λ`` with its limit ``τ`` at 0).
    shift: added to the diagonal.
    steps: Lanczos steps at most (default ``min(M, 200)``).
    tol: stop when the answer is non-zero and changed by less than
      ``tol`` (relative) over each of the last two :data:`CHECK_EVERY`
      steps.
    progress: a progress bar: ``True``, ``False``, or ``None`` (shown once
      the run has taken a second).
    checkpoint: a directory: the state is saved there after every check
      and a run with the same ``op`` size, ``b`` and ``steps`` resumes
      from it.

  Returns:
    ``(*batch, *b.shape)``.

  Warns:
    ConvergenceWarning: ``steps`` ran out with the last change above
      ``tol``.

  >>> import jax.numpy as jnp, autontk
  >>> op = autontk.MatrixOperator(jnp.diag(jnp.arange(1., 5.)))
  >>> y = autontk.solvers.matfun(op, jnp.ones(4), lambda l: jnp.exp(-l))
  >>> bool(jnp.allclose(y, jnp.exp(-jnp.arange(1., 5.)), atol=1e-6))
  True
  """
  cols, vector = checks.columns(op, b)
  m, r = cols.shape
  shift = checks.check_scalar(shift, "shift")
  tol = checks.check_scalar(tol, "tol", 0.0)
  steps = min(m, 200) if steps is None else int(steps)
  if not 1 <= steps <= m:
    raise ValueError(f"`steps` must be in 1..M={m}; got {steps}.")
  state = _State.start(cols, steps, checkpoint)
  result = _iterate(op, shift, fn, state, steps, tol, progress, checkpoint)
  checks.check_finite(result, "fn(op) b")
  if not state.finished and steps < m:
    what = "Lanczos" if bool(jnp.any(result != 0)) else (
        "Lanczos (the answer is still zero: fn may weigh eigenvalues the "
        "first steps have not reached)")
    checks.warn_not_converged(what, state.change, tol, state.done)
  return result[..., 0] if vector else result


def _iterate(op: Any, shift: float, fn: Callable, state: "_State",
             steps: int, tol: float, progress: bool | None,
             checkpoint: Any) -> jax.Array:
  """Lanczos steps until the answer settles, ``steps`` run out or the
  Krylov space is invariant; the last answer ``(*batch, M, R)``."""
  r = state.cols.shape[1]
  result = _evaluate(state, fn) if state.finished else None
  with checks.progress_bar(steps, "Lanczos", progress) as bar:
    bar.update(state.done)
    while state.done < steps and not state.finished:
      state.arrays = _step(op, shift, state.arrays, state.done)
      state.done += 1
      bar.update(1)
      if state.done % CHECK_EVERY and state.done < steps:
        continue
      new = _evaluate(state, fn)
      quiet = False
      if result is not None:
        # Two quiet checks in a row, on a non-zero answer: a Krylov space
        # that has not reached the eigenvalues fn weighs most (exp(−τΘ) with
        # large τ) can give the same (often zero) answer twice.
        previous = state.change
        state.change = checks.relative(
            (new - result).reshape(-1, r), new.reshape(-1, r))
        quiet = (max(state.change, previous) <= tol and
                 bool(jnp.any(new != 0)))
      result = new
      state.finished = quiet or state.exhausted()
      state.save(checkpoint)
  return _evaluate(state, fn) if result is None else result


class _State:
  """Lanczos state: basis ``q (R, steps + 1, M)``, ``alpha``, ``beta``
  ``(steps, R)``, the steps done, and whether the run has finished (with
  the last change of the answer)."""

  def __init__(self, cols: Any, arrays: tuple[Any, ...], done: int):
    self.cols, self.arrays, self.done = cols, arrays, done
    self.finished, self.change = False, np.inf

  @staticmethod
  def start(cols: Any, steps: int, checkpoint: Any) -> "_State":
    state = _State(cols, _start(cols, steps, True), 0)
    if checkpoint is not None:
      state.load(checkpoint)
    return state

  @property
  def norms(self) -> Any:
    return jnp.linalg.norm(self.cols, axis=0)

  def exhausted(self) -> bool:
    """Every column's Krylov space is invariant (``beta`` = 0)."""
    return bool(jnp.all(self.arrays[2][self.done - 1] == 0))

  def _path(self, directory: Any) -> str:
    return os.path.join(os.fspath(directory), "lanczos.npz")

  def save(self, directory: Any) -> None:
    if directory is None:
      return
    os.makedirs(os.fspath(directory), exist_ok=True)
    q, a, b = (np.asarray(v) for v in self.arrays)
    tmp = self._path(directory) + ".tmp.npz"
    np.savez(tmp, cols=np.asarray(self.cols), q=q, alpha=a, beta=b,
             done=self.done, finished=self.finished, change=self.change)
    os.replace(tmp, self._path(directory))

  def load(self, directory: Any) -> None:
    path = self._path(directory)
    if not os.path.exists(path):
      return
    with np.load(path) as saved:
      same = (saved["q"].shape == self.arrays[0].shape and
              np.array_equal(saved["cols"], np.asarray(self.cols)))
      if same:
        self.arrays = tuple(jnp.asarray(saved[k], self.cols.dtype)
                            for k in ("q", "alpha", "beta"))
        self.done = int(saved["done"])
        self.finished = bool(saved["finished"])
        self.change = float(saved["change"])


def _start(v0: Any, steps: int, full: bool) -> tuple[Any, Any, Any]:
  """The state ``(q, alpha, beta)``: the basis ``q (R, slots, M)``
  (``steps + 1`` vectors per column with full reorthogonalisation, else the
  last two; columns lead, so the reorthogonalisation is a batched matrix
  product) with ``v0``'s normalised columns first, and zero ``alpha``,
  ``beta`` ``(steps, R)``."""
  m, r = v0.shape
  norms = jnp.linalg.norm(v0, axis=0)
  q = jnp.zeros((r, steps + 1 if full else 2, m), v0.dtype)
  q = q.at[:, 0].set((v0 / jnp.where(norms > 0, norms, 1)).T)
  zeros = jnp.zeros((steps, r), v0.dtype)
  return q, zeros, zeros


def _vector(arrays: tuple[Any, ...], j: Any) -> Any:
  """Basis vector ``j`` of every column: ``(M, R)``."""
  q = arrays[0]
  return q[:, j % q.shape[1]].T


def _lanczos_step(arrays: tuple[Any, ...], w: Any, j: Any,
                  full: bool) -> tuple[Any, Any, Any]:
  """Step ``j`` given ``w = A q_j (M, R)``: ``alpha[j]``, ``beta[j]`` and
  the next basis vector (slot ``(j + 1) mod slots``)."""
  q, alpha, beta = arrays
  slots = q.shape[1]
  w = w.T
  qj, prev = q[:, j % slots], q[:, (j - 1) % slots]
  a = jnp.sum(qj * w, axis=1)
  w = w - a[:, None] * qj - jnp.where(j > 0, beta[j - 1], 0.0)[:, None] * prev
  if full:
    for _ in range(2):  # twice is enough (Kahan)
      w = w - jnp.einsum("rkm,rk->rm", q, jnp.einsum("rkm,rm->rk", q, w))
  norm = jnp.linalg.norm(w, axis=1)
  # A column whose Krylov space is exhausted stops: its later vectors are
  # zero, so they carry no weight in T.
  scale = jnp.maximum(jnp.abs(a), jnp.max(jnp.abs(alpha), axis=0))
  live = norm > 100 * jnp.finfo(w.dtype).eps * jnp.maximum(scale, 1e-300)
  norm = jnp.where(live, norm, 0.0)
  nxt = jnp.where(live[:, None], w / jnp.where(live, norm, 1)[:, None], 0.0)
  q = q.at[:, (j + 1) % slots].set(nxt)
  return q, alpha.at[j].set(a), beta.at[j].set(norm)


_extend = jax.jit(_lanczos_step, static_argnums=3)
"""One step for a product computed outside (any function)."""


@functools.partial(jax.jit, static_argnums=0)
def _step(op: Any, shift: float, arrays: tuple[Any, ...], j: Any):
  """One step of ``op + shift·I``, its product compiled with the step."""
  qj = _vector(arrays, j)
  return _lanczos_step(arrays, op.matmat(qj) + shift * qj, j, True)


@jax.jit
def _eigh(alpha: Any, beta: Any) -> tuple[Any, Any]:
  """``eigh`` of the tridiagonals of ``alpha``, ``beta`` ``(..., s)``."""
  s = alpha.shape[-1]
  up = beta[..., :, None] * jnp.eye(s, k=1, dtype=alpha.dtype)
  t = alpha[..., None] * jnp.eye(s, dtype=alpha.dtype) + up + jnp.swapaxes(
      up, -1, -2)
  return jnp.linalg.eigh(t)


def _evaluate(state: _State, fn: Callable) -> jax.Array:
  """``‖b‖ Q fn(T) e₁`` from the first ``done`` steps: ``(*batch, M, R)``."""
  return _evaluate_program(fn, state.arrays, state.done, state.norms)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate_program(fn: Callable, arrays: tuple[Any, ...], k: Any,
                      norms: Any) -> jax.Array:
  """Compiled once per ``fn`` for every step count: T keeps its full size,
  the steps not taken form a decoupled block (on ``alpha[0]``, inside the
  spectrum) whose eigenvectors miss ``e₁`` and are masked out."""
  q, alpha, beta = arrays
  steps = alpha.shape[0]
  taken = jnp.arange(steps) < k
  diag = jnp.where(taken[:, None], alpha, alpha[:1])
  off = jnp.where((jnp.arange(1, steps + 1) < k)[:, None], beta, 0.0)
  theta, s = _eigh(diag.T, off.T)  # (R, s), (R, s, s)
  values = jax.vmap(fn)(theta)  # (R, *batch, s)
  s0 = s[:, 0, :]
  lead = (slice(None),) + (None,) * (values.ndim - 2)
  coef = jnp.einsum("rik,r...k->r...i", s, values * s0[lead])
  coef = jnp.where(taken, coef, 0.0)
  return jnp.einsum("rim,r...i->...mr", q[:, :steps], coef) * norms
