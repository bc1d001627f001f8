"""How one output leaf's kernel reads as a square matrix.

A kernel Θ(x, x) of an output leaf of shape ``(N, *rest)`` (batch axis
anywhere, as ``vmap_axes`` says) is read as neural-tangents reads kernels for
predictions: the traced axes as ``Θ ⊗ I`` (the operator acts on each traced
index separately), every other axis as a matrix index. The operator's side
is ``M = N · Π(plain sizes)``, indexed ``(n, p1, p2, ...)`` row-major: for an
``(N, O)`` output with ``trace_axes=()`` that is ``n · O + o``, the index of
``y.reshape(-1)``; with ``trace_axes=(-1,)`` it is ``n``.

With traced axes ``T`` (total size ``|T|``),

    (Θ V)[n, p] = (1/|T|) Σ_t Σ_{m, p'} J[n, p, t] · J[m, p', t] V[m, p'],

so a product takes one cotangent per traced index ``t`` (``V ⊗ e_t``) and
keeps the ``t``-th component of each JVP (:meth:`OperatorLayout.cotangents`,
:meth:`OperatorLayout.read`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from autontk._axes import LeafAxes


@dataclasses.dataclass(frozen=True)
class OperatorLayout:
  """One output leaf as a matrix index.

  Attributes:
    shape: the output leaf's shape for the whole dataset.
    batch_axis: its batch axis.
    trace: its traced axes (canonical, without the batch axis).
  """

  shape: tuple[int, ...]
  batch_axis: int
  trace: tuple[int, ...]

  @staticmethod
  def of(shape: tuple[int, ...], axes: LeafAxes,
         batch_axis: int) -> "OperatorLayout":
    """The layout of a leaf, or a ``ValueError`` for axes no operator has."""
    if batch_axis in axes.trace or batch_axis in axes.diagonal:
      raise ValueError(
          f"The batch axis (axis {batch_axis} of an output of shape "
          f"{tuple(shape)}) is traced or diagonal: the operator needs it as "
          "a matrix index. Leave it out of `trace_axes`.")
    if axes.diagonal:
      raise ValueError("An NTK operator takes no `diagonal_axes`.")
    return OperatorLayout(tuple(shape), batch_axis, axes.trace)

  def resized(self, n: int) -> "OperatorLayout":
    """The same leaf for a dataset of ``n`` examples."""
    shape = list(self.shape)
    shape[self.batch_axis] = n
    return dataclasses.replace(self, shape=tuple(shape))

  @property
  def n(self) -> int:
    return self.shape[self.batch_axis]

  @property
  def plain(self) -> tuple[int, ...]:
    """Output axes other than the batch axis that are matrix indices."""
    return tuple(a for a in range(len(self.shape))
                 if a != self.batch_axis and a not in self.trace)

  @property
  def plain_size(self) -> int:
    return math.prod(self.shape[a] for a in self.plain)

  @property
  def trace_size(self) -> int:
    return math.prod(self.shape[a] for a in self.trace)

  @property
  def size(self) -> int:
    """The operator's side ``M``."""
    return self.n * self.plain_size

  @property
  def perm(self) -> tuple[int, ...]:
    """Output axes in canonical order: batch, plain, traced."""
    return (self.batch_axis,) + self.plain + self.trace

  def cotangents(self, v: Any, batch: int) -> Any:
    """Cotangents of one batch for the columns ``v``.

    Args:
      v: ``(batch, plain_size, R)`` columns of the operand for the batch.
      batch: examples in the batch.

    Returns:
      ``(R · |T|, *leaf shape with the batch axis of size batch)``: for
      column ``r`` and traced index ``t``, ``v[..., r] ⊗ e_t``.
    """
    r, tn = v.shape[-1], self.trace_size
    c = jnp.moveaxis(v, -1, 0)[:, None, :, :, None]
    c = c * jnp.eye(tn, dtype=v.dtype)[None, :, None, None, :]
    c = c.reshape((r * tn, batch) + self._sizes(self.plain + self.trace))
    inverse = [self.perm.index(a) for a in range(len(self.shape))]
    return jnp.transpose(c, (0,) + tuple(1 + i for i in inverse))

  def read(self, out: Any, r: int) -> Any:
    """The product's rows of one batch from the JVPs of its cotangents.

    Args:
      out: ``(R · |T|, *leaf shape of the batch)`` JVP outputs.
      r: the number of columns R.

    Returns:
      ``(batch, plain_size, R)``: the ``t``-th component of the JVP of
      cotangent ``t``, averaged over ``t``.
    """
    tn = self.trace_size
    c = jnp.transpose(out, (0,) + tuple(1 + a for a in self.perm))
    batch = c.shape[1]
    c = c.reshape(r, tn, batch, self.plain_size, tn)
    return jnp.einsum("rtbpt->bpr", c) / tn

  def dense(self, kernel: Any) -> Any:
    """The ``(M, M')`` matrix of a kernel in the layout of ``ntk_fn``
    (rows on this layout's side; columns on a side with the same axes)."""
    kept = [a for a in range(len(self.shape)) if a not in self.trace]
    order = (self.batch_axis,) + self.plain
    rows = [2 * kept.index(a) for a in order]
    cols = [2 * kept.index(a) + 1 for a in order]
    k = np.transpose(np.asarray(kernel), rows + cols)
    return k.reshape(self.size, -1)

  def _sizes(self, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in axes)
