"""Which entries of a parameter leaf a value holds: slices as sub-parameters.

A network that stacks its layers in one leaf uses each layer through a
static slice (``p["w"][i]``), a known ``dynamic_slice``, a ``gather`` with
constant indices, or the per-iteration slice of ``lax.scan``. The interpreter
follows such *views* of a parameter instead of treating them as uses, so the
layer that consumes the slice keeps its structure and, in the pair products,
uses of disjoint slices never meet.

A :class:`Region` records, per leaf axis, the entries a value covers (in the
value's order) and how the value's axes run along the leaf's axes; a leaf
axis may instead be *indexed by a loop* (one entry per iteration of a
``scan``), which the structure then carries as a label shared by θ, the
cotangent and the factors. A :class:`ViewMap` is what a view primitive does
to its input's axes; view rules registered in the rule table produce them.
:func:`align` tells how two uses of one leaf meet: not at all (disjoint
regions: the pair costs nothing), on the same entries, or on a sub-box that
each side is restricted to.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

Indices = Union[range, tuple[int, ...]]


def canonical(entries: Sequence[int]) -> Indices:
  """``entries`` as a ``range`` when they are evenly spaced, else a tuple."""
  if isinstance(entries, range):
    return entries
  entries = tuple(int(e) for e in entries)
  if len(entries) == 1:
    return range(entries[0], entries[0] + 1)
  if len(entries) >= 2:
    step = entries[1] - entries[0]
    if step != 0 and all(b - a == step for a, b in zip(entries, entries[1:])):
      return range(entries[0], entries[-1] + step, step)
  return entries


def pick(entries: Indices, positions: Indices) -> Indices:
  """``entries[positions]``."""
  if (isinstance(entries, range) and isinstance(positions, range) and
      positions.step > 0):
    return entries[positions.start:positions.stop:positions.step]
  return canonical([entries[p] for p in positions])


@dataclasses.dataclass(frozen=True)
class ViewMap:
  """What a view primitive does: ``y = x[picks]`` with axes rearranged.

  Attributes:
    picks: per input axis, the positions kept, in order; an input axis that
      no output axis comes from keeps exactly one position (it is dropped).
    source: per output axis, the input axis it runs along, or ``None`` for
      a new size-1 axis.
  """

  picks: tuple[Indices, ...]
  source: tuple[int | None, ...]

  @classmethod
  def relabel(cls, shape: Sequence[int],
              source: Sequence[int | None]) -> "ViewMap":
    """Every entry kept; output axes from ``source``."""
    return cls(tuple(range(n) for n in shape), tuple(source))


@dataclasses.dataclass(frozen=True)
class Region:
  """The entries of one parameter leaf that a value holds.

  Attributes:
    index: per leaf axis, the entries covered, in the value's order.
    axes: per axis of the value, the leaf axis it runs along (``None``: a
      size-1 axis of the value that is no leaf axis).
    loops: ``(leaf axis, loop level)`` pairs: that leaf axis is indexed by
      the iteration of the enclosing loop at that nesting level (its
      entries, one per iteration, in ``index``); per iteration the value
      does not have the axis. Leaf axes in neither ``axes`` nor ``loops``
      hold one entry.
  """

  index: tuple[Indices, ...]
  axes: tuple[int | None, ...]
  loops: tuple[tuple[int, int], ...] = ()

  @classmethod
  def full(cls, shape: Sequence[int]) -> "Region":
    return cls(tuple(range(n) for n in shape), tuple(range(len(shape))))

  @property
  def sizes(self) -> tuple[int, ...]:
    """Entries per leaf axis."""
    return tuple(len(ix) for ix in self.index)

  @property
  def value_shape(self) -> tuple[int, ...]:
    return tuple(1 if a is None else len(self.index[a]) for a in self.axes)

  def view(self, vm: ViewMap) -> "Region | None":
    """The region of ``y`` when ``y`` is this value viewed through ``vm``."""
    index = list(self.index)
    picks = vm.picks
    for j, a in enumerate(self.axes):
      if a is None:
        if tuple(picks[j]) != (0,):
          return None
        continue
      index[a] = pick(index[a], picks[j])
    kept = {s for s in vm.source if s is not None}
    if any(len(picks[j]) != 1 for j in range(len(self.axes))
           if j not in kept):
      return None
    axes = tuple(None if s is None else self.axes[s] for s in vm.source)
    return Region(tuple(index), axes, self.loops)

  def loop_over(self, axis: int, level: int,
                positions: Sequence[int] | None = None) -> "Region | None":
    """This value's axis ``axis`` becomes indexed by loop ``level``.

    ``positions``: the position along that axis each iteration takes
    (``None``: iteration ``t`` takes position ``t``, as ``scan`` slices its
    ``xs``). They must be distinct; the value keeps the axis as size 1 when
    ``positions`` is given (``dynamic_slice``), and loses it otherwise.
    """
    a = self.axes[axis]
    if a is None:  # a size-1 axis of the value alone: one iteration
      if positions is not None and tuple(positions) != (0,):
        return None
      axes = self.axes if positions is not None else (
          self.axes[:axis] + self.axes[axis + 1:])
      return Region(self.index, axes, self.loops)
    entries = self.index[a]
    if positions is not None:
      if len(set(positions)) != len(positions):
        return None
      entries = canonical([entries[p] for p in positions])
    index = self.index[:a] + (entries,) + self.index[a + 1:]
    if positions is None:
      axes = self.axes[:axis] + self.axes[axis + 1:]
    else:
      axes = self.axes[:axis] + (None,) + self.axes[axis + 1:]
    return Region(index, axes, self.loops + ((a, level),))


@dataclasses.dataclass(frozen=True)
class Alignment:
  """How two uses of one leaf meet: per leaf axis, the positions of the
  common entries on each side (``None``: all of that side's entries, in
  an order both sides share)."""

  positions1: tuple[Indices | None, ...]
  positions2: tuple[Indices | None, ...]
  sizes: tuple[int, ...]


def align(index1: Sequence[Indices],
          index2: Sequence[Indices]) -> Alignment | None:
  """The common entries of two regions' ``index``; ``None`` if disjoint."""
  p1, p2, sizes = [], [], []
  for e1, e2 in zip(index1, index2):
    if e1 == e2:
      p1.append(None)
      p2.append(None)
      sizes.append(len(e1))
      continue
    where2 = {e: i for i, e in enumerate(e2)}
    common = [(i, where2[e]) for i, e in enumerate(e1) if e in where2]
    if not common:
      return None
    p1.append(_positions([i for i, _ in common], len(e1)))
    p2.append(_positions([j for _, j in common], len(e2)))
    sizes.append(len(common))
  return Alignment(tuple(p1), tuple(p2), tuple(sizes))


def _positions(positions: list[int], size: int) -> Indices | None:
  out = canonical(positions)
  return None if out == range(size) else out
