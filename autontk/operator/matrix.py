"""A dense kernel matrix as a :class:`~autontk._types.KernelOperator`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from autontk.operator.layout import OperatorLayout


class MatrixOperator:
  """A dense symmetric ``(M, M)`` kernel with the operator protocol.

  What the solvers of :mod:`autontk.solvers` take when the kernel fits in
  memory; :meth:`from_kernel` reads a kernel in the layout of
  :func:`autontk.ntk_fn`.

  Args:
    matrix: ``(M, M)``, symmetric positive semi-definite (not checked: the
      solvers warn when they do not converge).

  >>> import jax.numpy as jnp
  >>> op = MatrixOperator(jnp.eye(3) * 2.)
  >>> op.matmat(jnp.ones(3)), op.trace()
  (Array([2., 2., 2.], dtype=float32), Array(6., dtype=float32))
  """

  def __init__(self, matrix: Any):
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
      raise ValueError(f"`matrix` must be square (M, M); got shape "
                       f"{matrix.shape}.")
    if not jnp.issubdtype(matrix.dtype, jnp.floating):
      raise TypeError(f"`matrix` must be floating-point; got {matrix.dtype}.")
    self.matrix = matrix

  @staticmethod
  def from_kernel(kernel: Any) -> "MatrixOperator":
    """The operator of a kernel laid out as ``ntk_fn`` returns it.

    Args:
      kernel: ``(N, N)`` (traced outputs), or ``(N, N, O, O, ...)`` with
        each untraced output axis twice: read as an ``(N·O·…)``-square
        matrix indexed ``n·O + o`` (the index of ``y.reshape(-1)``).

    >>> MatrixOperator.from_kernel(jnp.ones((4, 4, 3, 3))).shape
    (12, 12)
    """
    k = np.shape(kernel)
    if len(k) % 2 or any(a != b for a, b in zip(k[::2], k[1::2])):
      raise ValueError(f"`kernel` must have each axis twice, as (N, N) or "
                       f"(N, N, O, O); got shape {k}.")
    layout = OperatorLayout(tuple(k[::2]), 0, ())
    return MatrixOperator(layout.dense(kernel))

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.matrix.shape)

  @property
  def dtype(self) -> Any:
    return self.matrix.dtype

  def matmat(self, v: Any) -> Any:
    """``Θ v`` for ``v`` of shape ``(M,)`` or ``(M, R)``."""
    check_operand(self, v)
    return self.matrix @ jnp.asarray(v, self.dtype)

  matvec = matmat

  def __matmul__(self, v: Any) -> Any:
    return self.matmat(v)

  def diag(self) -> Any:
    return jnp.diagonal(self.matrix)

  def trace(self) -> Any:
    return jnp.trace(self.matrix)

  def to_dense(self) -> Any:
    return self.matrix

  def __repr__(self) -> str:
    return f"MatrixOperator(shape={self.shape}, dtype={self.dtype})"


def check_operand(op: Any, v: Any) -> None:
  """Raises a ``ValueError`` unless ``v`` is ``(M,)`` or ``(M, R)``."""
  m = op.shape[1]
  shape = np.shape(v)
  if len(shape) not in (1, 2) or shape[0] != m:
    raise ValueError(f"The operand must have shape ({m},) or ({m}, R) for an "
                     f"operator of shape {op.shape}; got {shape}.")

