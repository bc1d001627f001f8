"""The train kernel of a prediction: dense, or an operator solved matrix-free.

A dense kernel is factored once (``eigh`` for finite times, Cholesky for
infinite time) and the factors are kept for later calls, as in
neural-tangents. A kernel given as an operator (anything with ``shape``,
``matmat``, ``trace``; e.g. :func:`autontk.ntk_operator`) is never
materialised: solves go through conjugate gradients and matrix functions
through Lanczos (:mod:`autontk.solvers`).
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from autontk.predict import _layout
from autontk.predict._layout import Layout

EigenFn = Callable[[jax.Array], jax.Array]
"""Maps the eigenvalues ``(m,)`` to ``(*batch, m)`` (e.g. one row per time)."""


def is_operator(k: Any) -> bool:
  """A kernel given as a linear operator rather than an array."""
  return hasattr(k, "matmat") and not isinstance(k, (jax.Array, np.ndarray))


def _solvers() -> Any:
  # The matrix-free route is the only user of the solvers; a dense-only
  # prediction does not import them.
  return importlib.import_module("autontk.solvers")


def regularizer(diag_reg: float, absolute: bool, trace: Any, m: int) -> Any:
  """The added diagonal: ``diag_reg``, or ``diag_reg · trace / m``."""
  return diag_reg if absolute else diag_reg * trace / m


class TrainKernel:
  """``k_train_train + shift · I`` on ``(M, R)`` targets, dense or not.

  Args:
    k: the dense kernel (shape ``layout.kernel_shape()``) or an operator of
      shape ``(M, M)``.
    layout: the targets' layout.
    diag_reg: the diagonal regularizer.
    absolute: ``diag_reg`` in absolute units (else relative to the mean
      diagonal, ``trace / M``).
    name: the argument's name, for errors.
  """

  def __init__(self, k: Any, layout: Layout, diag_reg: float = 0.,
               absolute: bool = False, name: str = "k_train_train"):
    self.layout, self.name = layout, name
    # Concrete even when first built under jit (see ``eigh``).
    with jax.ensure_compile_time_eval():
      self._setup(k, layout.m, diag_reg, absolute)

  def _setup(self, k: Any, m: int, diag_reg: float, absolute: bool) -> None:
    name, layout = self.name, self.layout
    if is_operator(k):
      if tuple(k.shape) != (m, m):
        raise ValueError(f"`{name}` is an operator of shape {tuple(k.shape)}, "
                         f"expected {(m, m)} for targets of shape "
                         f"{layout.y_shape} with traced axes {layout.trace}.")
      self.op, self.dense, self.dtype = k, None, jnp.dtype(k.dtype)
      # An operator's exact trace costs a pass over the data.
      trace = k.trace() if diag_reg and not absolute else 0.
    else:
      k = _layout.check_kernel(k, layout.kernel_shape(), name)
      self.op, self.dense, self.dtype = None, _layout.to_2d(k), k.dtype
      trace = jnp.trace(self.dense)
    self.shift = regularizer(diag_reg, absolute, trace, m)

  def _regularized(self) -> jax.Array:
    return self.dense + self.shift * jnp.eye(self.layout.m, dtype=self.dtype)

  @functools.cached_property
  def eigh(self) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues ``(M,)`` and eigenvectors ``(M, M)`` (dense only)."""
    # Computed concretely even on a first call under jit, so the kept
    # factors are arrays rather than that trace's tracers.
    with jax.ensure_compile_time_eval():
      evals, evecs = jnp.linalg.eigh(self._regularized())
    warn_if_not_psd(evals, self.name)
    return evals, evecs

  @functools.cached_property
  def _cholesky(self) -> Any:
    with jax.ensure_compile_time_eval():
      factor = jsl.cho_factor(self._regularized(), lower=False)
    if not isinstance(factor[0], jax.core.Tracer) and not np.all(
        np.isfinite(np.asarray(factor[0]))):
      raise ValueError(f"`{self.name}` (+ the diagonal regularizer) is not "
                       f"positive definite: its Cholesky factorization "
                       f"failed. Pass diag_reg > 0.")
    return factor

  def solve(self, b: jax.Array) -> jax.Array:
    """``(K + shift I)⁻¹ b`` for ``b`` of shape ``(M, R)``."""
    if self.op is not None:
      return _solvers().solve(self.op, b, shift=self.shift)
    return jsl.cho_solve(self._cholesky, b.astype(self.dtype))

  def apply(self, fn: EigenFn, b: jax.Array) -> jax.Array:
    """``fn(K + shift I) b``: ``b`` ``(M, R)`` -> ``(*batch, M, R)``."""
    if self.op is not None:
      return _solvers().matfun(self.op, b, fn, shift=self.shift)
    evals, evecs = self.eigh
    coef = evecs.T @ b.astype(self.dtype)
    return jnp.einsum("ji,...i,ir->...jr", evecs, fn(evals), coef)

  def matmat(self, v: jax.Array) -> jax.Array:
    """``K v`` without the regularizer, ``v`` of shape ``(M, R)``."""
    if self.op is not None:
      return self.op.matmat(v)
    return self.dense @ v


def warn_if_not_psd(evals: jax.Array, name: str) -> None:
  """Warns when the smallest eigenvalue is negative beyond round-off
  (they are clipped to 0 in the predictions, as in neural-tangents)."""
  if isinstance(evals, jax.core.Tracer):
    return
  evals = np.asarray(evals)
  eps = np.finfo(evals.dtype).eps
  top = float(np.abs(evals).max(initial=0.))
  tol = max(math.sqrt(eps), 10 * evals.size * eps) * top
  if evals.size and float(evals.min()) < -tol:
    warnings.warn(f"`{name}` is not positive semi-definite beyond round-off: "
                  f"its smallest eigenvalue is {float(evals.min()):.3g} "
                  f"(largest magnitude {top:.3g}); negative eigenvalues are "
                  f"clipped to 0.", UserWarning, stacklevel=4)


def cross(k_test_train: Any, layout: Layout, v: jax.Array,
          name: str = "k_test_train") -> tuple[jax.Array, tuple[int, ...]]:
  """``k_test_train @ v`` for ``v`` of shape ``(..., M, R)``.

  Returns:
    ``(product of shape (..., M_test, R), the test targets' kept axes)``.
  """
  if is_operator(k_test_train):
    lead = v.shape[:-2]
    flat = jnp.moveaxis(v, -2, 0).reshape(layout.m, -1)
    out = k_test_train.matmat(flat)
    kept = layout.test_kept(out.shape[0])
    out = out.reshape((out.shape[0],) + lead + (layout.r,))
    return jnp.moveaxis(out, 0, -2), kept
  k = test_kernel(k_test_train, layout, name)
  return jnp.einsum("lm,...mr->...lr", _layout.to_2d(k), v), k.shape[::2]


def test_kernel(k: Any, layout: Layout, name: str) -> jax.Array:
  """A dense test-train kernel, checked against the train targets."""
  k = jnp.asarray(k)
  n = len(layout.kept)
  if k.ndim != 2 * n or k.shape[1::2] != layout.kept:
    want = ", ".join(f"n_test{i}, {d}" for i, d in enumerate(layout.kept))
    raise ValueError(f"`{name}` has shape {k.shape}, expected ({want}): the "
                     f"test and train kept axes zipped, for targets of shape "
                     f"{layout.y_shape} with traced axes {layout.trace}.")
  _layout.check_finite(k, name)
  return k


def max_eigenvalue(k: Any) -> Any:
  """The largest eigenvalue of a dense kernel (any zipped shape) or an
  operator."""
  if is_operator(k):
    return _solvers().max_eigenvalue(k)
  k = _layout.to_2d(k)
  _layout.check_finite(k, "ntk_train_train")
  if isinstance(k, jax.core.Tracer):
    return jnp.linalg.eigvalsh(k)[-1]
  return np.linalg.eigvalsh(np.asarray(k, np.float64))[-1]
