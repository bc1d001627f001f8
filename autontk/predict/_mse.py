"""Gradient flow on the MSE loss in closed form, and the largest stable
learning rate."""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from autontk._types import Axes
from autontk.predict import _kernel
from autontk.predict._kernel import TrainKernel
from autontk.predict._layout import Layout

ArrayOrScalar = Union[None, int, float, jax.Array]
"""An optional array or scalar."""

def expm1_fn(size: int, t: jax.Array) -> _kernel.EigenFn:
  """``λ -> expm1(-max(λ, 0) t / size)``, one row per time in ``t``."""
  t = jnp.reshape(t, (-1, 1))
  return lambda evals: jnp.expm1(-jnp.maximum(evals, 0.) * t / size)


def inv_expm1_fn(size: int, t: jax.Array) -> _kernel.EigenFn:
  """``λ -> expm1(-λ t / size) / λ``; 0 where ``λ <= 0`` (a direction the
  flow never moves along)."""
  expm1 = expm1_fn(size, t)

  def fn(evals):
    positive = evals > 0
    return jnp.where(positive, expm1(evals) / jnp.where(positive, evals, 1.),
                     0.)
  return fn


def check_inputs(fx_train_0: Any, fx_test_0: Any, k_test_train: Any) -> None:
  if fx_train_0 is None and fx_test_0 is None:
    raise ValueError("Both `fx_train_0` and `fx_test_0` are `None`, i.e. no "
                     "predictions will be computed.")
  if fx_test_0 is not None and k_test_train is None:
    raise ValueError("To get predictions on the test set, please provide "
                     "`k_test_train` kernel to the parent function.")


def gradient_descent_mse(k_train_train: Any, y_train: jax.Array,
                         learning_rate: float = 1., diag_reg: float = 0.,
                         diag_reg_absolute_scale: bool = False,
                         trace_axes: Axes = (-1,)) -> MseFlow:
  """Predicts the outputs of function-space gradient flow on the MSE loss.

  The loss is ``0.5 · mean((f(x_train) - y_train)²)`` over all entries of
  ``y_train``, so that ``f_t = y + exp(-η Θ t / y_train.size) (f_0 - y)`` on
  the train set and the test set follows through ``k_test_train``. Finite
  ``t`` uses the eigendecomposition of the (regularized) kernel, ``t=None``
  a Cholesky solve (or, for an operator, Lanczos and CG); both are computed
  on the first call of their kind and kept.

  Args:
    k_train_train: the train kernel: an array of shape
      ``zip(y_train.shape, y_train.shape)`` without ``trace_axes`` (e.g.
      ``(N, N)`` for ``y_train`` ``(N, O)`` and ``trace_axes=(-1,)``, or
      ``(N, N, O, O)`` for ``trace_axes=()``), or an operator of shape
      ``(M, M)`` with ``M`` the product of the untraced target axes (e.g.
      :func:`autontk.ntk_operator`).
    y_train: train targets, e.g. ``(N, O)``.
    learning_rate: the step size ``η``; times are in its units.
    diag_reg: strength of the diagonal regularizer added to the kernel.
    diag_reg_absolute_scale: ``True``: ``diag_reg`` is absolute; ``False``:
      relative to the mean diagonal, ``diag_reg · trace(K) / M``.
    trace_axes: the target axes the kernel was traced over; it is read as
      ``Θ ⊗ I`` on them.

  Returns:
    ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``
    returning ``fx_train_t``, ``fx_test_t`` or both (``fx_train_0=None``
    or ``fx_test_0=None`` skips a set), with leading axes ``t.shape`` for an
    array ``t``; ``t=None`` is infinite time. ``k_test_train`` is an array
    of shape ``(N_test, N, ...)`` (zipped like the train kernel) or an
    operator with ``matmat`` (e.g. ``NtkOperator.cross(x_test)``).

  >>> import jax.numpy as jnp, autontk
  >>> k, y = jnp.eye(3) * 2., jnp.ones((3, 1))
  >>> predict_fn = autontk.predict.gradient_descent_mse(k, y)
  >>> fx_train, fx_test = predict_fn(jnp.array([0., 1e9]), 0., 0., k)
  >>> fx_test.shape, round(float(fx_test[-1, 0, 0]), 4)
  ((2, 3, 1), 1.0)
  """
  return MseFlow(k_train_train, y_train, learning_rate, diag_reg,
                 diag_reg_absolute_scale, trace_axes)


class MseFlow:
  """The ``predict_fn`` of :func:`gradient_descent_mse`; the train kernel's
  factors are computed on first use and kept."""

  def __init__(self, k_train_train: Any, y_train: jax.Array,
               learning_rate: float, diag_reg: float, absolute: bool,
               trace_axes: Axes):
    self.y_train = jnp.asarray(y_train)
    self.layout = Layout(self.y_train.shape, trace_axes)
    self.kernel = TrainKernel(k_train_train, self.layout, diag_reg, absolute)
    self.learning_rate = learning_rate

  def __call__(self, t: ArrayOrScalar = None, fx_train_0: ArrayOrScalar = 0.,
               fx_test_0: ArrayOrScalar = None, k_test_train: Any = None
               ) -> Any:
    """Train [and test] outputs at time[s] ``t`` (``None``: infinity)."""
    check_inputs(fx_train_0, fx_test_0, k_test_train)
    if t is None:
      return self._infinite(fx_train_0, fx_test_0, k_test_train)
    return self._finite(t, fx_train_0, fx_test_0, k_test_train)

  def _infinite(self, fx_train_0, fx_test_0, k_test_train):
    y_train, layout = self.y_train, self.layout
    fx_train_t = y_train.astype(self.kernel.dtype)
    if fx_test_0 is None:
      return fx_train_t
    rhs = layout.to_matrix(y_train if fx_train_0 is None else
                           jnp.broadcast_to(y_train - fx_train_0,
                                            y_train.shape))
    dfx, kept = _kernel.cross(k_test_train, layout, self.kernel.solve(rhs))
    fx_test_t = fx_test_0 + layout.from_matrix(dfx, kept)
    return fx_test_t if fx_train_0 is None else (fx_train_t, fx_test_t)

  def _finite(self, t, fx_train_0, fx_test_0, k_test_train):
    y_train, layout, kernel = self.y_train, self.layout, self.kernel
    t = jnp.asarray(t, kernel.dtype) * self.learning_rate
    rhs = layout.to_matrix(-y_train if fx_train_0 is None else
                           jnp.broadcast_to(fx_train_0 - y_train,
                                            y_train.shape))
    out = []
    if fx_train_0 is not None:
      d = kernel.apply(expm1_fn(y_train.size, t), rhs)
      out.append(fx_train_0 + layout.from_matrix(
          d.reshape(t.shape + d.shape[1:])))
    if fx_test_0 is not None:
      d = kernel.apply(inv_expm1_fn(y_train.size, t), rhs)
      d, kept = _kernel.cross(k_test_train, layout, d)
      out.append(fx_test_0 + layout.from_matrix(
          d.reshape(t.shape + d.shape[1:]), kept))
    return out[0] if len(out) == 1 else tuple(out)


def max_learning_rate(ntk_train_train: Any, y_train_size: Optional[int] = None,
                      momentum: float = 0., eps: float = 1e-12) -> float:
  """The largest learning rate for which (momentum) gradient descent on the
  MSE loss ``0.5 · mean((f - y)²)`` of the linearized network converges:
  ``2 (1 + momentum) · y_train_size / (λ_max + eps)``.

  Args:
    ntk_train_train: the NTK on the train set, an array (any zipped shape)
      or an operator (its top eigenvalue by Lanczos).
    y_train_size: ``y_train.size``; defaults to the kernel's side as a
      matrix (exact for ``trace_axes=()``).
    momentum: the momentum of the optimizer.
    eps: keeps the divisor positive.

  Returns:
    The maximal feasible learning rate.

  >>> import jax.numpy as jnp, autontk
  >>> round(float(autontk.predict.max_learning_rate(jnp.eye(4) * 2.)), 6)
  4.0
  """
  if _kernel.is_operator(ntk_train_train):
    side = ntk_train_train.shape[0]
  else:
    side = int(jnp.size(ntk_train_train) ** 0.5)
  factor = side if y_train_size is None else y_train_size
  return 2 * (1 + momentum) * factor / (_kernel.max_eigenvalue(
      ntk_train_train) + eps)
