"""Output-axis bookkeeping: trace / diagonal axes and the kernel layout.

The kernel of one output leaf of rank ``d`` is laid out as neural-tangents
does: walking the output axes in order, a traced axis disappears (summed and
divided by its size), a diagonal axis appears once, and any other axis appears
twice in a row (``x1`` side, then ``x2`` side). For the common
``(N, O)`` output with ``trace_axes=(-1,)`` that is ``(N1, N2)``; with no
traced axis it is ``(N1, N2, O1, O2)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LeafAxes:
  """Canonical axes options for one output leaf.

  Attributes:
    ndim: rank of the output leaf (including its batch axis, if any).
    trace: sorted non-negative axes to trace over.
    diagonal: sorted non-negative axes to keep only the diagonal of.
  """

  ndim: int
  trace: tuple[int, ...]
  diagonal: tuple[int, ...]

  @property
  def plain(self) -> tuple[int, ...]:
    """Axes that appear twice (x1 side and x2 side) in the kernel."""
    return tuple(i for i in range(self.ndim)
                 if i not in self.trace and i not in self.diagonal)

  def kernel_shape(self, shape1: Sequence[int],
                   shape2: Sequence[int]) -> tuple[int, ...]:
    out: list[int] = []
    for i in range(self.ndim):
      if i in self.trace:
        continue
      if i in self.diagonal:
        out.append(shape1[i])
      else:
        out.extend((shape1[i], shape2[i]))
    return tuple(out)

  def trace_size(self, shape1: Sequence[int]) -> int:
    return math.prod(shape1[i] for i in self.trace)

  def sublists(self, offset: int = 0
               ) -> tuple[list[int], list[int], list[int]]:
    """Einsum index lists for (side 1, side 2, kernel) over the output axes.

    Index ``offset + 2*i`` names axis ``i`` on side 1 (and on side 2 when the
    axis is traced or diagonal), ``offset + 2*i + 1`` names it on side 2.
    """
    s1, s2, out = [], [], []
    for i in range(self.ndim):
      a, b = offset + 2 * i, offset + 2 * i + 1
      if i in self.trace or i in self.diagonal:
        s1.append(a)
        s2.append(a)
        if i in self.diagonal:
          out.append(a)
      else:
        s1.append(a)
        s2.append(b)
        out.extend((a, b))
    return s1, s2, out

  def drop(self, axis: int) -> "LeafAxes":
    """The axes of the same leaf with output axis ``axis`` removed."""
    def shift(axes):
      return tuple(a - (a > axis) for a in axes if a != axis)
    return LeafAxes(self.ndim - 1, shift(self.trace), shift(self.diagonal))


def canonicalize(axes: Sequence[int], ndim: int, name: str,
                 leaf_name: str = "the output") -> tuple[int, ...]:
  """Maps possibly negative axes to sorted non-negative ones, or raises."""
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      valid = (f"valid axes are {-ndim}..{ndim - 1}" if ndim else
               f"it has no axes: pass {name}=()")
      raise ValueError(
          f"`{name}` contains axis {a}, out of range for {leaf_name} of rank "
          f"{ndim} ({valid}).")
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(
        f"`{name}`={tuple(axes)} names the same axis of {leaf_name} (rank "
        f"{ndim}) more than once.")
  return tuple(sorted(out))


def leaf_axes(trace_axes: Sequence[int], diagonal_axes: Sequence[int],
              shape1: Sequence[int], shape2: Sequence[int],
              leaf_name: str = "the output") -> LeafAxes:
  """Validates the axes options against the shapes of f(x1) and f(x2)."""
  if len(shape1) != len(shape2):
    raise ValueError(
        f"f(x1) and f(x2) must have outputs of the same rank; {leaf_name} has "
        f"shape {tuple(shape1)} for x1 and {tuple(shape2)} for x2.")
  ndim = len(shape1)
  trace = canonicalize(trace_axes, ndim, "trace_axes", leaf_name)
  diag = canonicalize(diagonal_axes, ndim, "diagonal_axes", leaf_name)
  both = set(trace) & set(diag)
  if both:
    raise ValueError(
        f"`trace_axes` and `diagonal_axes` overlap on axis {sorted(both)} of "
        f"{leaf_name}; an axis can be traced or diagonal, not both.")
  for i in trace + diag:
    if shape1[i] != shape2[i]:
      kind = "traced" if i in trace else "diagonal"
      raise ValueError(
          f"f(x1) and f(x2) differ on {kind} axis {i} of {leaf_name}: shapes "
          f"{tuple(shape1)} and {tuple(shape2)}. Traced and diagonal axes must "
          f"have the same size on both sides (for the batch axis, pass "
          f"inputs with the same batch size).")
  return LeafAxes(ndim, trace, diag)


def contract_outer(a1: jnp.ndarray, a2: jnp.ndarray, axes: LeafAxes,
                   extra1: Sequence[int] = (), extra2: Sequence[int] = (),
                   precision=None, preferred_element_type=None
                   ) -> jnp.ndarray:
  """Σ over traced axes (and ``extra`` trailing axes) of ``a1 ⊗ a2``.

  ``a1`` and ``a2`` have the leaf's output axes first and then trailing axes
  (e.g. parameter axes) which are summed over pairwise. The result is laid
  out as the kernel (not yet divided by the trace size), accumulated and
  returned in ``preferred_element_type`` when given.
  """
  s1, s2, out = axes.sublists()
  n_extra = a1.ndim - axes.ndim
  base = 2 * axes.ndim
  extra = list(range(base, base + n_extra))
  return jnp.einsum(a1, s1 + extra, a2, s2 + extra, out, precision=precision,
                    preferred_element_type=preferred_element_type)
