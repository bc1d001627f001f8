"""The batch axis: which axis of every input, kwarg and output leaf it is.

With ``vmap_axes`` given to :func:`autontk.ntk_fn`, its axes are used (an
unbatched input leaf or kwarg is shared by every tile). Without it, axis 0
of every leaf of x and of every output leaf is the batch axis, and kwargs are
shared by every tile. Either way ``f`` must treat examples independently: a
tile is ``f`` applied to a slice of the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from autontk._batch_geometry import kwargs_leaf_axes, take_examples
from autontk._kwargs import is_array_leaf
from autontk._problem import NtkProblem
from autontk._types import PyTree


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A side without its arrays: what a compiled tile program depends on.

  Hashable when the non-array kwargs are, so programs can be reused across
  calls.
  """

  treedef: Any
  batched: tuple[int, ...]
  shared: tuple[int, ...]
  static: tuple[tuple[int, Any], ...]

  def assemble(self, batched: Sequence[Any],
               shared: Sequence[Any]) -> tuple[PyTree, dict[str, Any]]:
    leaves: list[Any] = [None] * self.treedef.num_leaves
    for i, v in zip(self.batched, batched):
      leaves[i] = v
    for i, v in zip(self.shared, shared):
      leaves[i] = v
    for i, v in self.static:
      leaves[i] = v
    return jax.tree.unflatten(self.treedef, leaves)


@dataclasses.dataclass
class Side:
  """One side (x1 or x2) of the kernel: its inputs and kwargs, flattened.

  Attributes:
    leaves: leaves of ``(x, kwargs)``; arrays on the host, or Python values.
    treedef: the structure of ``(x, kwargs)``.
    axes: per leaf, its batch axis or ``None`` (shared by every tile).
    size: the batch size N.
  """

  leaves: list[Any]
  treedef: Any
  axes: list[int | None]
  size: int

  @property
  def batched(self) -> list[int]:
    return [i for i, a in enumerate(self.axes) if a is not None]

  @property
  def shared(self) -> list[int]:
    return [i for i, (a, v) in enumerate(zip(self.axes, self.leaves))
            if a is None and is_array_leaf(v)]

  def tile_leaf(self, i: int, rows: tuple[int, int], size: int) -> np.ndarray:
    """Leaf ``i`` (batched) for examples ``rows``, padded to ``size``."""
    return take_examples(self.leaves[i], self.axes[i], rows[0], size,
                         self.size)

  def tile_shape(self, i: int, size: int) -> tuple[int, ...]:
    shape = list(np.shape(self.leaves[i]))
    shape[self.axes[i]] = size
    return tuple(shape)

  @property
  def skeleton(self) -> "Skeleton":
    arrays = set(self.batched) | set(self.shared)
    return Skeleton(self.treedef, tuple(self.batched), tuple(self.shared),
                    tuple((i, v) for i, v in enumerate(self.leaves)
                          if i not in arrays))

  def assemble(self, batched: Sequence[Any],
               shared: Sequence[Any]) -> tuple[PyTree, dict[str, Any]]:
    """``(x, kwargs)`` of one tile from its batched and shared leaves."""
    return self.skeleton.assemble(batched, shared)

  def host_tile(self, rows: tuple[int, int],
                size: int) -> tuple[PyTree, dict[str, Any]]:
    return self.assemble([self.tile_leaf(i, rows, size) for i in self.batched],
                         [self.leaves[i] for i in self.shared])


def _to_host(v: Any) -> Any:
  if isinstance(v, jax.Array):
    if jax.dtypes.issubdtype(v.dtype, jax.dtypes.extended):
      return v  # typed PRNG keys stay JAX arrays
    return np.asarray(v)
  return v


def sides(problem: NtkProblem) -> tuple[Side, Side]:
  """The two sides of ``problem`` with their batch axes (validated)."""
  spec = problem.vmap
  out = []
  for which, name in ((1, "x1"), (2, "x2")):
    x, kw = problem.side(which)
    x_leaves = jax.tree.leaves(x)
    if spec is not None:
      x_axes = list(spec.x_axes)
      kwd = spec.kw_axes_dict
    else:
      x_axes, kwd = [0] * len(x_leaves), {}
      for i, v in enumerate(x_leaves):
        if np.ndim(v) == 0:
          raise ValueError(
              f"`{name}` leaf {i} is a scalar: without `vmap_axes`, axis 0 "
              "of every input leaf is the batch axis. Pass vmap_axes to "
              "ntk_fn to name the batch axes.")
    leaves, treedef = jax.tree.flatten((x, kw))
    axes = x_axes + kwargs_leaf_axes(kw, kwd)
    for i, (v, a) in enumerate(zip(leaves, axes)):
      if a is not None and not is_array_leaf(v):
        raise TypeError(f"A batched kwarg leaf of {name} must be an array; "
                        f"got {type(v).__name__}.")
    sizes = {np.shape(v)[a] for v, a in zip(leaves, axes) if a is not None}
    if len(sizes) != 1:
      raise ValueError(
          f"The batch axes of `{name}` have different sizes {sorted(sizes)}; "
          "without `vmap_axes`, axis 0 of every input leaf is the batch axis. "
          "Pass vmap_axes to ntk_fn to name the batch axes.")
    out.append(Side([_to_host(v) for v in leaves], treedef, axes,
                    sizes.pop()))
  return out[0], out[1]


def output_batch_axes(problem: NtkProblem, n1: int, n2: int) -> list[int]:
  """Batch axis of each output leaf, checked against the batch sizes."""
  if problem.vmap is not None:
    return list(problem.vmap.out_axes)
  for i, (o1, o2) in enumerate(zip(problem.out1, problem.out2)):
    if not o1.shape or o1.shape[0] != n1 or o2.shape[0] != n2:
      raise ValueError(
          f"Output leaf {i} of f has shape {tuple(o1.shape)} for x1 (batch "
          f"size {n1}): without `vmap_axes`, axis 0 of every output leaf must "
          "be the batch axis. Pass vmap_axes to ntk_fn to name it.")
  return [0] * len(problem.out1)


def ntk_arguments(x1: PyTree, kw1: dict[str, Any], x2: PyTree,
                  kw2: dict[str, Any], same: bool
                  ) -> tuple[PyTree, PyTree | None, dict[str, Any]]:
  """``(x1, x2, kwargs)`` for ``ntk(x1, x2, params, **kwargs)`` of one tile.

  Each kwarg becomes a 2-tuple (x1's, x2's), which ``ntk`` splits back;
  ``same`` passes ``x2=None`` (the tile reuses the work on x1).
  """
  kwargs = {k: (kw1[k], kw2[k]) for k in kw1}
  return x1, (None if same else x2), kwargs
