"""Batch geometry: where the batch axis sits in a kernel, and how a batch is cut.

Chunked plans (blocks of the batch inside one program), ``ntk_tiled`` (tiles
across devices and to disk) and NTK-vector products need the same facts
about the batch axis of an output leaf, and take them from here:

* its position in the kernel layout of :mod:`autontk._axes`
  (:func:`kernel_position`) and its *kind*: kept twice (``"pairwise"``),
  once (``"diagonal"``) or summed away (``"traced"``), see
  :class:`BatchLayout`;
* ``Θ(x2, x1)`` from ``Θ(x1, x2)`` (:func:`mirror_perm`);
* a traced batch axis is computed as a diagonal one and summed at the end
  (:func:`traced_as_diagonal`, :func:`traced_batch_options`,
  :func:`mean_over_batch`), so each example is traced exactly once and
  padding never reaches the sum;
* which leaves of a kwargs dict are batched (:func:`kwargs_leaf_axes`);
* a ragged cell padded by repeating its last example
  (:func:`take_examples`), which keeps any ``f`` that treats examples
  independently finite and leaves the real examples' values unchanged;
* the grid of cells (blocks or tiles) covering the kernel: the upper
  triangle when x2 is x1, the diagonal only when the batch axis is diagonal
  or traced (:class:`BatchGrid`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk._axes import LeafAxes

PAIRWISE, DIAGONAL, TRACED = "pairwise", "diagonal", "traced"
"""Kinds of batch axis: kept on both sides, kept once, summed away."""


def kernel_position(axes: LeafAxes, axis: int) -> int:
  """Kernel axis where output axis ``axis`` (its x1 side) lands.

  Args:
    axes: the leaf's axes.
    axis: an output axis of the leaf (traced axes before it vanish, diagonal
      ones take one kernel axis, others two).

  >>> kernel_position(LeafAxes(3, trace=(), diagonal=(0,)), 2)
  3
  """
  return sum(0 if a in axes.trace else 1 if a in axes.diagonal else 2
             for a in range(axis))


def mirror_perm(axes: LeafAxes, lead: int = 0) -> tuple[int, ...]:
  """Transposition giving ``Θ(x2, x1)`` from ``Θ(x1, x2)``.

  Swaps the two sides of every axis that appears twice in the kernel.

  Args:
    axes: the leaf's axes.
    lead: leading (stacking) axes before the kernel, left in place.

  >>> mirror_perm(LeafAxes(2, trace=(), diagonal=()))
  (1, 0, 3, 2)
  """
  perm = list(range(lead))
  for a in range(axes.ndim):
    if a in axes.trace:
      continue
    p = len(perm)
    perm.extend((p,) if a in axes.diagonal else (p + 1, p))
  return tuple(perm)


def batch_kind(axes: LeafAxes, batch_axis: int) -> str:
  """``TRACED``, ``DIAGONAL`` or ``PAIRWISE``: how the batch axis appears."""
  if batch_axis in axes.trace:
    return TRACED
  return DIAGONAL if batch_axis in axes.diagonal else PAIRWISE


def traced_as_diagonal(axes: LeafAxes, batch_axis: int) -> LeafAxes:
  """The axes a cell is computed with: a traced batch axis made diagonal.

  Summing the per-example kernel afterwards (:func:`mean_over_batch`) gives
  the traced one; padded examples of a ragged cell are cropped before.
  """
  if batch_axis not in axes.trace:
    return axes
  trace = tuple(a for a in axes.trace if a != batch_axis)
  return LeafAxes(axes.ndim, trace, tuple(sorted(axes.diagonal +
                                                 (batch_axis,))))


def traced_batch_options(trace_axes: Sequence[int],
                         diagonal_axes: Sequence[int], ranks: Sequence[int],
                         batch_axes: Sequence[int]
                         ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(trace_axes, diagonal_axes)`` options with the batch axis diagonal.

  :func:`traced_as_diagonal` at the level of ``ntk_fn``'s options (as the
  user wrote them, negative axes included), for code that runs cells
  through an :class:`~autontk.NtkFn`.

  Args:
    trace_axes, diagonal_axes: the options; ``trace_axes`` names the batch
      axis of every output leaf.
    ranks: rank of each output leaf.
    batch_axes: batch axis of each output leaf.

  Raises:
    ValueError: different entries of ``trace_axes`` name the batch axis in
      different leaves (no single option can be moved).
  """
  trace_axes, diagonal_axes = tuple(trace_axes), tuple(diagonal_axes)
  entries = {next(k for k, a in enumerate(trace_axes) if a % r == b)
             for r, b in zip(ranks, batch_axes)}
  if len(entries) != 1:
    raise ValueError(
        f"trace_axes={trace_axes} names the batch axis by different entries "
        "in different output leaves; name it the same way (e.g. 0) in every "
        "leaf.")
  k = entries.pop()
  return (trace_axes[:k] + trace_axes[k + 1:],
          diagonal_axes + (trace_axes[k],))


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """Where the batch axis of one output leaf sits in its kernel.

  Attributes:
    axes: the leaf's canonical axes (a traced batch axis may be given traced
      or already made diagonal: its position is the same).
    batch_axis: the leaf's batch axis.
  """

  axes: LeafAxes
  batch_axis: int

  @property
  def kind(self) -> str:
    return batch_kind(self.axes, self.batch_axis)

  @property
  def matched(self) -> bool:
    """Example i of x1 pairs with example i of x2 only (traced/diagonal)."""
    return self.kind != PAIRWISE

  @property
  def position(self) -> int:
    """Kernel axis of the x1 batch index (of the computed kernel)."""
    return kernel_position(self.axes, self.batch_axis)

  @property
  def computed_axes(self) -> LeafAxes:
    """The axes cells are computed with (:func:`traced_as_diagonal`)."""
    return traced_as_diagonal(self.axes, self.batch_axis)

  def index(self, rows: tuple[int, int], cols: tuple[int, int],
            ndim: int) -> tuple[slice, ...]:
    """Index of a cell's region in a computed kernel of rank ``ndim``."""
    idx = [slice(None)] * ndim
    idx[self.position] = slice(*rows)
    if not self.matched:
      idx[self.position + 1] = slice(*cols)
    return tuple(idx)

  def crop(self, rows: int, cols: int, ndim: int) -> tuple[slice, ...]:
    """Index cropping a padded cell result to ``rows × cols`` examples."""
    return self.index((0, rows), (0, cols), ndim)


def mean_over_batch(kernel: Any, position: int, n: int) -> Any:
  """A traced batch axis: the per-example kernel summed at ``position``, / n.

  Host arrays (possibly memory-mapped, of any size) accumulate in float64;
  JAX arrays in their own dtype, inside the program.
  """
  if isinstance(kernel, np.ndarray):
    total = np.sum(kernel, axis=position, dtype=np.float64)
    return (total / n).astype(kernel.dtype)
  return jnp.sum(kernel, axis=position) / n


def kwargs_leaf_axes(kwargs: Mapping[str, Any],
                     kw_axes: Mapping[str, Sequence[int | None]]
                     ) -> list[int | None]:
  """Batch axis of each leaf of ``kwargs`` (``jax.tree.leaves`` order).

  Args:
    kwargs: ``f``'s keyword arguments for one side.
    kw_axes: kwarg name -> flat axes of its leaves (``VmapSpec.kw_axes``);
      a kwarg it does not name is not batched.
  """
  axes: list[int | None] = []
  for k in sorted(kwargs):  # jax flattens dicts in sorted key order
    n = len(jax.tree.leaves(kwargs[k]))
    axes.extend(kw_axes.get(k, (None,) * n))
  return axes


def take_examples(leaf: Any, axis: int | None, start: Any, size: int,
                  n: int) -> Any:
  """``size`` examples from ``start`` along ``axis``, padded past ``n``.

  Indices beyond the last example ``n - 1`` are clamped to it (the padding
  repeats the last example). A traced ``start`` (a block offset inside a
  program) slices on device; a Python ``start`` slices on the host, as a
  view when no padding is needed.

  Args:
    leaf: an array with a batch axis of size ``n`` (or anything, with
      ``axis=None``: returned as is).
    axis: the batch axis, or ``None`` for a leaf every cell shares.
    start: first example (an int, or a traced int32 scalar).
    size: examples to take.
    n: the batch size.
  """
  if axis is None:
    return leaf
  if np.ndim(leaf) == 0:
    raise ValueError("A batched leaf must have at least one axis.")
  if isinstance(start, jax.Array):
    idx = jnp.minimum(start + jnp.arange(size), n - 1)
    return jnp.take(leaf, idx, axis=axis)
  if isinstance(leaf, np.ndarray) and start + size <= n:
    sl = [slice(None)] * leaf.ndim
    sl[axis] = slice(start, start + size)
    return np.asarray(leaf[tuple(sl)])
  idx = np.minimum(np.arange(start, start + size), n - 1)
  return np.take(leaf, idx, axis=axis)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell (block or tile) of a :class:`BatchGrid`.

  Attributes:
    row: cell index along x1.
    col: cell index along x2 (equals ``row`` for a matched batch axis).
    rows: ``(start, stop)`` example range of x1.
    cols: ``(start, stop)`` example range of x2.
    same_inputs: a diagonal cell of a kernel with x2 = x1, computed as
      ``ntk(x1_cell, None)`` (reusing the work on x1).
    mirrored: an off-diagonal cell of a symmetric grid, also written
      transposed (:func:`mirror_perm`) at ``(col, row)``.
  """

  row: int
  col: int
  rows: tuple[int, int]
  cols: tuple[int, int]
  same_inputs: bool
  mirrored: bool

  @property
  def key(self) -> tuple[int, int]:
    return (self.row, self.col)


@dataclasses.dataclass(frozen=True)
class BatchGrid:
  """Cells of ``t1 × t2`` examples covering an ``n1 × n2`` kernel.

  The last cell of a row or column is ragged when ``t`` does not divide
  ``n``; it is computed at the full cell shape (:func:`take_examples`) and
  cropped, so one program serves every cell of a kind.

  Attributes:
    n1, n2: batch sizes of x1 and x2.
    t1, t2: examples per cell along x1 and x2.
    symmetric: x2 is x1: diagonal cells reuse x1; for a pairwise batch axis
      only the upper triangle is computed and mirrored into the lower one.
    matched: the batch axis is diagonal or traced: only diagonal cells.

  >>> [c.key for c in BatchGrid(5, 5, 2, 2, True, False).cells()]
  [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
  """

  n1: int
  n2: int
  t1: int
  t2: int
  symmetric: bool
  matched: bool

  def __post_init__(self):
    if min(self.n1, self.n2) < 1:
      raise ValueError(f"The batch is empty (N1={self.n1}, N2={self.n2}).")
    if min(self.t1, self.t2) < 1:
      raise ValueError(f"`tile` must be positive; got ({self.t1}, {self.t2}).")
    if (self.symmetric or self.matched) and self.t1 != self.t2:
      raise ValueError(
          f"`tile` must be square when x2 is None or the batch axis is "
          f"diagonal/traced (tiles sit on the diagonal); got "
          f"({self.t1}, {self.t2}).")
    if self.matched and self.n1 != self.n2:
      raise ValueError(
          f"A diagonal or traced batch axis needs x1 and x2 of the same batch "
          f"size; got N1={self.n1} and N2={self.n2}.")

  @staticmethod
  def fit(n1: int, n2: int, t1: int, t2: int, symmetric: bool,
          matched: bool) -> "BatchGrid":
    """The grid with cell sizes clipped to the batch sizes."""
    return BatchGrid(n1, n2, min(t1, n1), min(t2, n2), symmetric, matched)

  @property
  def shape(self) -> tuple[int, int]:
    """Number of cell rows and columns."""
    return math.ceil(self.n1 / self.t1), math.ceil(self.n2 / self.t2)

  def cell(self, row: int, col: int) -> Cell:
    same = self.symmetric and row == col
    return Cell(row, col, (row * self.t1, min((row + 1) * self.t1, self.n1)),
                (col * self.t2, min((col + 1) * self.t2, self.n2)), same,
                self.symmetric and row != col)

  def cells(self) -> list[Cell]:
    """The cells to compute, row-major."""
    r, c = self.shape
    if self.matched:
      keys = [(i, i) for i in range(r)]
    elif self.symmetric:
      keys = [(i, j) for i in range(r) for j in range(i, c)]
    else:
      keys = [(i, j) for i in range(r) for j in range(c)]
    return [self.cell(i, j) for i, j in keys]

  def by_kind(self) -> dict[str, list[Cell]]:
    """The cells as ``"diag"`` (cells (i, i) of a symmetric or matched grid,
    each alone in its row) and ``"pair"`` (all others), row-major."""
    out: dict[str, list[Cell]] = {}
    for c in self.cells():
      diag = (self.symmetric or self.matched) and c.row == c.col
      out.setdefault("diag" if diag else "pair", []).append(c)
    return out

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
