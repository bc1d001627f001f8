"""The tile grid of a kernel and where each tile lands in the kernel layout.

A kernel over N1 × N2 examples is cut into tiles of ``t1 × t2`` examples; the
last tile of a row or column is ragged when ``t`` does not divide ``N``. Every
tile is *computed* at the full tile shape (inputs padded by repeating the last
example, the result cropped), so one compiled program serves the whole grid
and a tile gives the same bits wherever it runs.

The batch axis of an output leaf appears in the kernel either twice
("pairwise": one axis for x1, one for x2) or once ("matched": a diagonal
batch axis, or a traced one, which is computed as a diagonal and summed).
Matched kernels only need the diagonal tiles; when x2 is x1, pairwise kernels
only need the upper triangle, mirrored into the lower one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from autontk._axes import LeafAxes


@dataclasses.dataclass(frozen=True)
class Tile:
  """One tile of the grid.

  Attributes:
    row: tile index along x1.
    col: tile index along x2 (equals ``row`` for matched kernels).
    rows: ``(start, stop)`` example range of x1.
    cols: ``(start, stop)`` example range of x2.
    same_inputs: computed as ``ntk(x1_tile, None)`` (a diagonal tile of a
      kernel with x2 = x1), reusing the work on x1.
    mirrored: an off-diagonal tile of a symmetric grid, also written
      transposed at ``(col, row)``.
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
class TileGrid:
  """Tiles covering an ``n1 × n2`` kernel.

  Attributes:
    n1, n2: batch sizes of x1 and x2.
    t1, t2: tile size along x1 and x2 (the last tile may be smaller).
    symmetric: x2 is x1; only the upper triangle is computed.
    matched: the batch axis is diagonal or traced; only diagonal tiles.
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

  @property
  def shape(self) -> tuple[int, int]:
    """Number of tile rows and columns."""
    return math.ceil(self.n1 / self.t1), math.ceil(self.n2 / self.t2)

  def _range(self, i: int, t: int, n: int) -> tuple[int, int]:
    return i * t, min((i + 1) * t, n)

  def tile(self, row: int, col: int) -> Tile:
    same = self.symmetric and row == col
    mirrored = self.symmetric and row != col
    return Tile(row, col, self._range(row, self.t1, self.n1),
                self._range(col, self.t2, self.n2), same, mirrored)

  def tiles(self) -> list[Tile]:
    """Tiles to compute, row-major (diagonal first within each kind)."""
    r, c = self.shape
    if self.matched:
      keys: Iterator[tuple[int, int]] = ((i, i) for i in range(r))
    elif self.symmetric:
      keys = ((i, j) for i in range(r) for j in range(i, c))
    else:
      keys = ((i, j) for i in range(r) for j in range(c))
    return [self.tile(i, j) for i, j in keys]

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LeafLayout:
  """Where the batch axis of one output leaf sits in its kernel.

  Attributes:
    axes: the leaf's canonical axes (as stored: traced batch axes already
      turned diagonal).
    batch_axis: the batch axis of the output leaf.
    position: kernel axis of the x1 batch index.
    matched: the batch axis appears once (diagonal), not twice.
  """

  axes: LeafAxes
  batch_axis: int
  position: int
  matched: bool

  @staticmethod
  def of(axes: LeafAxes, batch_axis: int) -> "LeafLayout":
    if batch_axis in axes.trace:
      raise ValueError("A traced batch axis is stored as a diagonal one.")
    pos = sum(0 if i in axes.trace else 1 if i in axes.diagonal else 2
              for i in range(batch_axis))
    return LeafLayout(axes, batch_axis, pos, batch_axis in axes.diagonal)

  def index(self, rows: tuple[int, int], cols: tuple[int, int],
            ndim: int) -> tuple[slice, ...]:
    """Kernel index of a tile's region."""
    idx = [slice(None)] * ndim
    idx[self.position] = slice(*rows)
    if not self.matched:
      idx[self.position + 1] = slice(*cols)
    return tuple(idx)

  def crop(self, rows: int, cols: int, ndim: int) -> tuple[slice, ...]:
    """Index cropping a padded tile result to ``rows × cols`` examples."""
    return self.index((0, rows), (0, cols), ndim)

  def mirror_perm(self) -> tuple[int, ...]:
    """Axes permutation giving Θ(x2, x1) from Θ(x1, x2): swap every pair."""
    perm: list[int] = []
    for i in range(self.axes.ndim):
      if i in self.axes.trace:
        continue
      p = len(perm)
      perm.extend((p,) if i in self.axes.diagonal else (p + 1, p))
    return tuple(perm)


def take_examples(leaf: Any, axis: int, start: int, stop: int,
                  size: int) -> np.ndarray:
  """Examples ``start:stop`` of ``leaf`` along ``axis``, padded to ``size``.

  Padding repeats the last example, which keeps any f that treats examples
  independently finite and leaves the real examples' values unchanged.
  """
  idx = np.minimum(np.arange(start, start + size), stop - 1)
  if np.ndim(leaf) == 0:
    raise ValueError("A batched leaf must have at least one axis.")
  if isinstance(leaf, np.ndarray) and idx[-1] == stop - 1 == start + size - 1:
    sl = [slice(None)] * leaf.ndim
    sl[axis] = slice(start, stop)
    return np.asarray(leaf[tuple(sl)])
  return np.take(leaf, idx, axis=axis)
