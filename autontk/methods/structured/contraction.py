"""The MJJMP of two uses, ``J1 J2ᵀ``, as one einsum over both sides.

Side 1 contributes ``cot_map(C1)`` and its factors, side 2 likewise; θ labels
are shared between the sides and summed. The output labels follow the kernel
layout of :mod:`autontk._axes`: a traced or diagonal output axis gets the same
label on both sides, so it is folded into the contraction rather than
applied afterwards. Under ``vmap_axes`` every operand carries the example
axis first, labelled as the output's batch axis. The contraction order is
``jnp.einsum``'s (``optimize``), run step by step; a step between the two
sides is written canonically, so one two pairs share (a weight's and its
bias's cotangent Gram) is one computation in the compiled program
(:func:`_einsum`).

Two uses of different regions of one leaf (:mod:`.regions`) meet only on
their common entries: :func:`restrict` cuts each side down to them first.
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
from jax import lax

from autontk._axes import LeafAxes
from autontk.methods.structured.heads import HeadSpec
from autontk.methods.structured.interpreter import UseSpec
from autontk.methods.structured.regions import Indices

_LETTERS = string.ascii_letters


def _index_pair(i1: jax.Array, i2: jax.Array, batched: bool,
                shared: bool) -> jax.Array:
  """``i1[..., None...] == i2[None..., ...]`` (batch axis aligned if shared)."""
  if batched and shared:
    a = i1.reshape(i1.shape + (1,) * (i2.ndim - 1))
    b = i2.reshape(i2.shape[:1] + (1,) * (i1.ndim - 1) + i2.shape[1:])
  else:
    a = i1.reshape(i1.shape + (1,) * i2.ndim)
    b = i2.reshape((1,) * i1.ndim + i2.shape)
  return a == b


@dataclasses.dataclass(frozen=True)
class PairSide:
  """One use's side of a pair product, for one output leaf.

  Attributes:
    use: the use's static description.
    cot: ``cot_map(C)`` for this leaf (``None`` for an identity cotangent);
      with a batch axis, the example axis comes first.
    factors: the use's factor arrays (indices for index factors).
    shape: the output leaf's shape on this side (x1 or x2).
    head: ``(HeadSpec, scale · W)`` when the leaf's cotangents run over its
      linear head's input ``g`` (:mod:`.heads`): ``cot`` then has ``g``'s
      axes in place of the output's, and ``W`` joins the einsum.
  """

  use: UseSpec
  cot: jax.Array | None
  factors: Sequence[jax.Array]
  shape: tuple[int, ...]
  head: tuple[HeadSpec, jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class PairLayout:
  """What both sides of every pair of one output leaf share.

  Attributes:
    axes: the leaf's trace/diagonal axes.
    batch_axis: the leaf's batch axis under ``vmap_axes``, else ``None``.
    leaf: the output leaf's index (for the uses' identity cotangents).
    theta_shape: per axis of the parameter leaf, the entries both uses
      cover (the leaf's shape when both cover all of it).
    dtype: the kernel dtype.
    precision: ``jax.lax.Precision`` of the einsum (``None``: default).
    optimize: ``jnp.einsum``'s contraction-path strategy.
  """

  axes: LeafAxes
  batch_axis: int | None
  leaf: int
  theta_shape: tuple[int, ...]
  dtype: Any
  precision: Any = None
  optimize: Any = "auto"


class _Labels:
  """Einsum labels: fresh ints, merged by union-find where an identity
  cotangent makes a use's output axes the kernel's output axes."""

  def __init__(self, first: int):
    self._next = first
    self._parent: dict[int, int] = {}

  def fresh(self) -> int:
    self._next += 1
    return self._next - 1

  def find(self, label: int) -> int:
    while self._parent.get(label, label) != label:
      label = self._parent[label]
    return label

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self._parent[max(ra, rb)] = min(ra, rb)


@dataclasses.dataclass
class _Operands:
  """The einsum being built: dense operands and the sides' index factors."""

  dense: list[tuple[jax.Array, list[int]]] = dataclasses.field(
      default_factory=list)
  # (θ axis, θ axis size, indices, labels of the indices)
  index: list[tuple[int, int, jax.Array, list[int]]] = dataclasses.field(
      default_factory=list)
  consumed: set[int] = dataclasses.field(default_factory=set)
  sign: float = 1.0


@dataclasses.dataclass(frozen=True)
class _HeadLabels:
  """One side's head in an einsum: labels of ``g``'s and ``W``'s axes, of
  the contracted pairs, and the output labels only ``W`` carries."""

  g: list[int]
  w: list[int]
  summed: list[int]
  w_only: set[int]


def _head_labels(head: HeadSpec, a: list[int], labels: _Labels) -> _HeadLabels:
  summed = [labels.fresh() for _ in range(head.n_contract)]

  def role(r):
    if r[0] == "o":
      return a[r[1]]
    return summed[r[1]] if r[0] == "c" else labels.fresh()

  w_only = ({a[r[1]] for r in head.w_axes if r[0] == "o"} -
            {a[r[1]] for r in head.g_axes if r[0] == "o"})
  return _HeadLabels([role(r) for r in head.g_axes],
                     [role(r) for r in head.w_axes], summed, w_only)


def _add_side(side: PairSide, sub: list[int], layout: PairLayout,
              labels: _Labels, theta_ids: list[int], ops: _Operands,
              deferred: list[_HeadLabels] | None = None) -> None:
  """Appends one side's cotangent and factors, labelled for the pair (with
  ``deferred``, a head's ``W`` is left out and its labels recorded)."""
  u = side.use
  local = {l: theta_ids[k] for k, l in enumerate(u.theta_labels)}

  def g(l):
    if l not in local:
      local[l] = labels.fresh()
    return local[l]

  b = layout.batch_axis
  batch = [] if b is None else [sub[b]]
  a = [sub[i] for i in range(layout.axes.ndim) if i != b]
  ident = u.identity[layout.leaf] if u.identity else None
  if ident is None and side.head is not None:
    head, w = side.head
    hl = _head_labels(head, a, labels)
    ops.dense.append((side.cot, batch + hl.g + [g(l) for l in u.cot_labels]))
    if deferred is None:
      ops.dense.append((w, (batch if w.ndim > len(head.w_axes) else []) +
                        hl.w))
    else:
      deferred.append(hl)
  elif ident is None:
    ops.dense.append((side.cot, batch + a + [g(l) for l in u.cot_labels]))
  else:
    # The cotangent is the identity: the use's output axes *are* the
    # kernel's output axes on this side (only size-1 axes may differ).
    ops.sign *= ident
    a_sizes = [side.shape[i] for i in range(layout.axes.ndim) if i != b]
    a_big = [l for l, n in zip(a, a_sizes) if n != 1]
    y_big = [l for l, n in zip(u.cot_labels, u.out_shape) if n != 1]
    for out_label, l in zip(a_big, y_big):
      labels.union(out_label, g(l))
  for f, arr in zip(u.factors, side.factors):
    if f.index_label is not None:
      k = u.theta_labels.index(f.index_label)
      ops.index.append((k, f.index_size, arr,
                        batch + [g(l) for l in f.labels]))
    else:
      ops.dense.append((arr, batch + [g(l) for l in f.labels]))


def _add_index_factors(ops: _Operands, layout: PairLayout, labels: _Labels,
                       theta_ids: list[int]) -> None:
  """Index factors paired on the same θ axis become an equality mask; any
  other one becomes an explicit one-hot operand."""
  by_axis: dict[int, list] = {}
  for entry in ops.index:
    by_axis.setdefault(entry[0], []).append(entry)
  for k, entries in by_axis.items():
    if (len(entries) == 2 and _only_in_index(ops.dense, theta_ids[k]) and
        labels.find(theta_ids[k]) == theta_ids[k] and
        all(labels.find(l) == l for _, _, _, ls in entries for l in ls)):
      (_, _, i1, l1), (_, _, i2, l2) = entries
      batched = layout.batch_axis is not None
      shared = batched and l1[0] == l2[0]
      eq = _index_pair(i1, i2, batched, shared).astype(layout.dtype)
      ops.dense.append((eq, l1 + (l2[1:] if shared else l2)))
      ops.consumed.add(theta_ids[k])  # summed inside the equality mask
    else:
      for _, size, idx, ls in entries:
        ops.dense.append((jax.nn.one_hot(idx, size, dtype=layout.dtype),
                          ls + [theta_ids[k]]))


def _add_constant_axes(ops: _Operands, sizes: dict[int, int],
                       labels: _Labels, dtype) -> None:
  """A label no operand carries means J is constant along it (a θ axis that
  was summed or broadcast, an output axis of an identity cotangent): it
  enters as ones, i.e. as a factor of its size when summed."""
  carried = {l for _, ls in ops.dense for l in ls} | ops.consumed
  for l, n in sizes.items():
    r = labels.find(l)
    if r not in carried:
      carried.add(r)
      ops.dense.append((jnp.ones((n,), dtype), [r]))


def _spread_merged(result: jax.Array, reps: list[int], unique: list[int],
                   labels: _Labels, layout: PairLayout) -> jax.Array:
  """Output labels merged by identity cotangents: spreads the result onto
  the diagonal they imply (e.g. δ_ab for a last layer's outputs)."""
  out_sizes = dict(zip(unique, result.shape))
  ops, final, seen = [(result, unique)], [], set()
  for r in reps:
    if r in seen:
      l = labels.fresh()
      ops.append((jnp.eye(out_sizes[r], dtype=layout.dtype), [r, l]))
      final.append(l)
    else:
      seen.add(r)
      final.append(r)
  return _einsum(ops, final, layout.dtype, layout.precision, "auto")


def defers_heads(side1: PairSide, side2: PairSide,
                 layout: PairLayout) -> bool:
  """Whether to sum this pair with others in ``g``'s axes and apply the
  heads once (:func:`apply_heads`): both sides reach the leaf through its
  head (not as identity uses) and an axis only ``W`` carries (the
  vocabulary) stays in the kernel. A traced one is cheaper contracted per
  pair (``Σ_v W[v, k] W[v, k']`` is ``d × d``)."""
  def through_head(side):
    u = side.use
    return side.head is not None and (not u.identity or
                                      u.identity[layout.leaf] is None)
  if not (through_head(side1) and through_head(side2)):
    return False
  axes, b = layout.axes, layout.batch_axis
  s1, _, out = axes.sublists()
  a = [s1[i] for i in range(axes.ndim) if i != b]
  kept = _head_labels(side1.head[0], a, _Labels(0)).w_only & set(out)
  return bool(kept)


def pair_kernel(side1: PairSide, side2: PairSide, layout: PairLayout,
                defer_heads: bool = False) -> jax.Array:
  """``Σ_θ J1[a1, θ] J2[a2, θ]`` for one output leaf, kernel layout.

  Args:
    side1, side2: the two uses (same parameter) with their arrays.
    layout: what the sides share (axes, batch axis, θ shape, dtype...).
    defer_heads: both sides go through their leaf's head
      (:func:`defers_heads`): leave the heads' ``W`` out; the block then
      has the output axes ``g`` carries, then side 1's and side 2's
      contracted head axes, for :func:`apply_heads`.

  Returns:
    The (not yet trace-normalised) kernel block of this pair.
  """
  axes = layout.axes
  s1, s2, out = axes.sublists()
  labels = _Labels(2 * axes.ndim)
  theta_ids = [labels.fresh() for _ in layout.theta_shape]
  ops = _Operands()
  deferred = [] if defer_heads else None
  _add_side(side1, s1, layout, labels, theta_ids, ops, deferred)
  n1 = len(ops.dense)
  _add_side(side2, s2, layout, labels, theta_ids, ops, deferred)
  n2 = len(ops.dense)
  _add_index_factors(ops, layout, labels, theta_ids)
  dense = [(arr, [labels.find(l) for l in ls]) for arr, ls in ops.dense]
  ops.dense = dense
  sizes = dict(zip(theta_ids, layout.theta_shape))
  sizes.update(zip(s1, side1.shape))
  sizes.update(zip(s2, side2.shape))
  if deferred:
    w_only = set().union(*(h.w_only for h in deferred))
    sizes = {l: n for l, n in sizes.items() if l not in w_only}
    out = ([l for l in out if l not in w_only] +
           [l for h in deferred for l in h.summed])
  _add_constant_axes(ops, sizes, labels, layout.dtype)
  reps = [labels.find(l) for l in out]
  unique = list(dict.fromkeys(reps))
  sides = [1] * n1 + [2] * (n2 - n1) + [0] * (len(ops.dense) - n2)
  result = _einsum(ops.dense, unique, layout.dtype, layout.precision,
                   layout.optimize, sides)
  if len(unique) < len(out):
    result = _spread_merged(result, reps, unique, labels, layout)
  return result if ops.sign == 1.0 else ops.sign * result


def apply_heads(block: jax.Array, side1: PairSide, side2: PairSide,
                layout: PairLayout) -> jax.Array:
  """A sum of :func:`pair_kernel` blocks with ``defer_heads``, in kernel
  layout: both sides' heads applied once."""
  axes, b = layout.axes, layout.batch_axis
  s1, s2, out = axes.sublists()
  labels = _Labels(2 * axes.ndim)
  ops, heads = [], []
  for (spec, w), sub in ((side1.head, s1), (side2.head, s2)):
    batch = [] if b is None else [sub[b]]
    hl = _head_labels(spec, [sub[i] for i in range(axes.ndim) if i != b],
                      labels)
    ops.append((w, (batch if w.ndim > len(spec.w_axes) else []) + hl.w))
    heads.append(hl)
  w_only = heads[0].w_only | heads[1].w_only
  ops.append((block, [l for l in out if l not in w_only] + heads[0].summed +
              heads[1].summed))
  return _einsum(ops, out, layout.dtype, layout.precision, layout.optimize)


def _take(arr: jax.Array, axis: int, positions: Indices) -> jax.Array:
  if isinstance(positions, range) and positions.step > 0:
    return lax.slice_in_dim(arr, positions.start, positions.stop,
                            positions.step, axis)
  return jnp.take(arr, np.asarray(positions, np.int32), axis=axis)


def _identity_cot(side: PairSide, layout: PairLayout) -> PairSide:
  """An identity cotangent, materialised (only needed to restrict it)."""
  u = side.use
  b = layout.batch_axis
  a_shape = [side.shape[i] for i in range(layout.axes.ndim) if i != b]
  eye = u.identity[layout.leaf] * jnp.eye(math.prod(a_shape),
                                          dtype=layout.dtype)
  cot = eye.reshape(tuple(a_shape) + tuple(u.out_shape))
  if b is not None:
    cot = jnp.broadcast_to(cot, (side.shape[b],) + cot.shape)
  # The identity is over the output's entries, never a head's input.
  return PairSide(dataclasses.replace(u, identity=()), cot, side.factors,
                  side.shape, None)


def restrict(side: PairSide, positions: Sequence[Indices | None],
             layout: PairLayout) -> PairSide:
  """The side cut down to ``positions`` (per leaf axis, ``None``: all)."""
  if all(p is None for p in positions):
    return side
  u = side.use
  if u.identity and u.identity[layout.leaf] is not None:
    side = _identity_cot(side, layout)
  batched = layout.batch_axis is not None
  cot, factors = side.cot, list(side.factors)
  for k, pos in enumerate(positions):
    if pos is None:
      continue
    label = u.theta_labels[k]
    for i, l in enumerate(u.cot_labels):
      if l == label:
        cot = _take(cot, layout.axes.ndim + i, pos)
    for j, f in enumerate(u.factors):
      if f.index_label == label:
        factors[j] = _renumber(factors[j], pos, f.index_size)
      for i, l in enumerate(f.labels):
        if l == label:
          factors[j] = _take(factors[j], int(batched) + i, pos)
  sizes = {l: len(p) for l, p in zip(u.theta_labels, positions)
           if p is not None}
  fs = tuple(dataclasses.replace(f, index_size=sizes[f.index_label])
             if f.index_label in sizes else f for f in u.factors)
  return dataclasses.replace(side, use=dataclasses.replace(u, factors=fs),
                             cot=cot, factors=factors)


def _renumber(indices: jax.Array, positions: Indices, size: int):
  """Index-factor entries as positions among ``positions`` (-1: gone)."""
  table = np.full((size,), -1, np.int32)
  table[np.asarray(positions)] = np.arange(len(positions), dtype=np.int32)
  ok = (indices >= 0) & (indices < size)
  return jnp.where(ok, jnp.asarray(table)[jnp.clip(indices, 0, size - 1)],
                   -1)


def _spec(operands, out_labels) -> str:
  """The einsum string, letters given in order of first appearance."""
  used = list(dict.fromkeys([l for _, ls in operands for l in ls] +
                            list(out_labels)))
  if len(used) > len(_LETTERS):
    raise ValueError("structured_derivatives: too many einsum labels "
                     f"({len(used)}) for one contraction.")
  letter = dict(zip(used, _LETTERS))
  spec = ",".join("".join(letter[l] for l in ls) for _, ls in operands)
  return spec + "->" + "".join(letter[l] for l in out_labels)


def _gram(lhs: jax.Array, lhs_names: str, rhs: jax.Array, rhs_names: str,
          out_names: str, precision) -> tuple[jax.Array, str]:
  """One contraction of a side-1 operand with a side-2 one, written the
  same way wherever it occurs: size-1 axes dropped, letters renamed in
  order of appearance, the result in ``dot_general``'s own order (shared
  kept axes, then the first's, then the second's). A matrix (one kept
  axis or two) is left in that order, so that no transpose stands between
  two uses of one product: XLA folds a transposed matrix product into a
  second product with its operands swapped, and computes it twice. A
  larger block is laid out as ``out_names`` asks, the order its next step
  contracts fastest.

  Returns the result and its letters, then ``out_names``' size-1 axes.
  """
  ops = []
  for arr, names in ((lhs, lhs_names), (rhs, rhs_names)):
    keep = [i for i, n in enumerate(arr.shape) if n != 1]
    ops.append((arr.reshape([arr.shape[i] for i in keep]),
                [names[i] for i in keep]))
  (a, la), (b, lb) = ops
  kept = [c for c in out_names if c in la or c in lb]
  ua, ub = list(dict.fromkeys(la)), list(dict.fromkeys(lb))
  order = ([c for c in ua if c in kept and c in ub] +
           [c for c in ua if c in kept and c not in ub] +
           [c for c in ub if c in kept and c not in ua])
  result = jnp.einsum(_spec(ops, order), a, b, precision=precision)
  if len(order) > 2:  # a block product: laid out as the next step asks
    result = jnp.transpose(result, [order.index(c) for c in kept])
    order = kept
  ones = [c for c in out_names if c not in order]
  return (result.reshape(result.shape + (1,) * len(ones)),
          "".join(order + ones))


def _einsum(operands, out_labels, dtype, precision, optimize,
            sides: Sequence[int] | None = None) -> jax.Array:
  """``jnp.einsum`` over labelled operands, run step by step along its own
  path, as ``jnp.einsum`` runs it; a step that contracts one side's
  operand with the other side's (``sides``: 1, 2, or 0 for shared ones) is
  written canonically (:func:`_gram`). Two pair products that share such a
  step (a weight's and its bias's cotangent Gram ``Σ_k C1[a, k] C2[b, k]``,
  or the Gram of one input feeding several weights) then emit the same
  program, which XLA computes once."""
  arrays = [a.astype(dtype) for a, _ in operands]
  spec = _spec(operands, out_labels)
  if optimize is False or not all(isinstance(n, int) for a in arrays
                                  for n in a.shape):
    # No path, or symbolic shapes: jnp.einsum's own handling, in one call.
    return jnp.einsum(spec, *arrays, optimize=optimize, precision=precision)
  # The path exactly as jnp.einsum asks opt_einsum for it.
  _, steps = opt_einsum.contract_path(
      spec, *arrays, einsum_call=True, use_blas=True,
      optimize="optimal" if optimize is True else optimize)
  ins, out_all = spec.split("->")
  items = list(zip(arrays, sides or [0] * len(arrays), ins.split(",")))
  for inds, _, step, *_ in steps:
    picked = [items.pop(i) for i in inds]
    out = step.split("->")[1]
    by_side = sorted(picked, key=lambda p: p[1])
    if [p[1] for p in by_side] == [1, 2]:
      (a, _, la), (b, _, lb) = by_side
      result, out = _gram(a, la, b, lb, out, precision)
    else:  # operands given last first: jnp.einsum's own order inside it
      result = jnp.einsum(",".join(p[2] for p in picked[::-1]) + "->" + out,
                          *[p[0] for p in picked[::-1]], precision=precision)
    side = picked[0][1] if len({p[1] for p in picked}) == 1 else 0
    items.append((result, side, out))
  (result, _, names), = items
  return jnp.transpose(result, [names.index(c) for c in out_all])


def _only_in_index(operands, label: int) -> bool:
  return all(label not in ls for _, ls in operands)
