"""``matfun``: ``fn(Θ + shift·I) b`` by Lanczos, for gradient-flow predictions.

JAX has no Lanczos, so this is a small one: the Krylov basis ``Q`` of each
column of ``b`` with full reorthogonalisation (two Gram-Schmidt passes:
exact enough for the ≤ a few hundred steps these functions need), the
tridiagonal ``T = Qᵀ A Q`` and ``fn(A) b ≈ ‖b‖ Q fn(T) e₁``. ``fn`` is
evaluated on ``T``'s eigenvalues and may return a leading batch axis, so
one run gives ``exp(−τ_k Θ) b`` for every time ``τ_k``. The loop runs in
Python, one compiled step per product: it reports progress, stops when the
answer changes less than ``tol`` between checks, and can checkpoint its
state to a directory and resume from it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk.solvers import checks

CHECK_EVERY = 5
"""Steps between convergence checks (each an eigendecomposition of T)."""


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
    tol: stop when the answer changes by less than ``tol`` (relative)
      over :data:`CHECK_EVERY` steps.
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
  result, change = None, np.inf
  if state.finished:
    result, change = _evaluate(state, fn), state.change
  with checks.progress_bar(steps, "Lanczos", progress) as bar:
    bar.update(state.done)
    while state.done < steps and not state.finished:
      state.arrays = _step(op, shift, state.arrays, state.done)
      state.done += 1
      bar.update(1)
      if state.done % CHECK_EVERY and state.done < steps:
        continue
      new = _evaluate(state, fn)
      if result is not None:
        change = checks.relative(
            (new - result).reshape(-1, r), new.reshape(-1, r))
      result = new
      state.finished = change <= tol or state.exhausted()
      state.change = change
      state.save(checkpoint)
  if result is None:
    result = _evaluate(state, fn)
  checks.check_finite(result, "fn(op) b")
  if change > tol and not state.exhausted() and steps < m:
    checks.warn_not_converged("Lanczos", change, tol, state.done)
  return result[..., 0] if vector else result


class _State:
  """Lanczos state: basis ``q (steps + 1, M, R)``, ``alpha``, ``beta``
  ``(steps, R)``, the steps done, and whether the run has finished (with
  the last change of the answer)."""

  def __init__(self, cols: Any, arrays: tuple[Any, ...], done: int):
    self.cols, self.arrays, self.done = cols, arrays, done
    self.finished, self.change = False, np.inf

  @staticmethod
  def start(cols: Any, steps: int, checkpoint: Any) -> "_State":
    norms = jnp.linalg.norm(cols, axis=0)
    q = jnp.zeros((steps + 1,) + cols.shape, cols.dtype)
    q = q.at[0].set(cols / jnp.where(norms > 0, norms, 1))
    zeros = jnp.zeros((steps, cols.shape[1]), cols.dtype)
    state = _State(cols, (q, zeros, zeros), 0)
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


@jax.jit(static_argnums=0)
def _step(op: Any, shift: float, arrays: tuple[Any, ...], j: Any):
  """One Lanczos step: ``alpha[j]``, ``beta[j]`` and ``q[j + 1]``."""
  q, alpha, beta = arrays
  qj = q[j]
  w = op.matmat(qj) + shift * qj
  a = jnp.sum(qj * w, axis=0)
  for _ in range(2):  # full reorthogonalisation, twice is enough
    w = w - jnp.einsum("kmr,kr->mr", q, jnp.einsum("kmr,mr->kr", q, w))
  norm = jnp.linalg.norm(w, axis=0)
  scale = jnp.maximum(jnp.abs(a), jnp.max(jnp.abs(alpha), axis=0))
  live = norm > 100 * jnp.finfo(w.dtype).eps * jnp.maximum(scale, 1e-300)
  norm = jnp.where(live, norm, 0.0)
  q = q.at[j + 1].set(jnp.where(live, w / jnp.where(live, norm, 1), 0.0))
  return q, alpha.at[j].set(a), beta.at[j].set(norm)


def _evaluate(state: _State, fn: Callable) -> jax.Array:
  """``‖b‖ Q fn(T) e₁`` from the first ``done`` steps: ``(*batch, M, R)``."""
  return _evaluate_program(fn, state.arrays, state.done, state.norms)


@jax.jit(static_argnums=0)
def _evaluate_program(fn: Callable, arrays: tuple[Any, ...], k: Any,
                      norms: Any) -> jax.Array:
  """Compiled once per ``fn`` for every step count: T keeps its full size,
  the steps not taken form a decoupled block (on ``alpha[0]``, inside the
  spectrum) whose eigenvectors miss ``e₁`` and are masked out."""
  q, alpha, beta = arrays
  steps = alpha.shape[0]
  taken = jnp.arange(steps) < k
  diag = jnp.where(taken[:, None], alpha, alpha[:1])
  off = jnp.where((jnp.arange(1, steps) < k)[:, None], beta[:-1], 0.0)
  t = (jax.vmap(jnp.diag)(diag.T) + jax.vmap(lambda v: jnp.diag(v, 1))(
      off.T) + jax.vmap(lambda v: jnp.diag(v, -1))(off.T))  # (R, s, s)
  theta, s = jnp.linalg.eigh(t)
  values = jax.vmap(fn)(theta)  # (R, *batch, s)
  s0 = s[:, 0, :]
  lead = (slice(None),) + (None,) * (values.ndim - 2)
  coef = jnp.einsum("rik,r...k->r...i", s, values * s0[lead])
  coef = jnp.where(taken, coef, 0.0)
  return jnp.einsum("imr,r...i->...mr", q[:steps], coef) * norms
