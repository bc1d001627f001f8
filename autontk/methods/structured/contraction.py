"""The MJJMP of two uses, ``J1 J2ᵀ``, as one einsum over both sides.

Side 1 contributes ``cot_map(C1)`` and its factors, side 2 likewise; θ labels
are shared between the sides and summed. The output labels follow the kernel
layout of :mod:`autontk._axes`: a traced or diagonal output axis gets the same
label on both sides, so it is folded into the contraction rather than
applied afterwards. Under ``vmap_axes`` every operand carries the example
axis first, labelled as the output's batch axis. ``jnp.einsum`` picks the
contraction order for cost (``optimize``).
"""

from __future__ import annotations

import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from autontk._axes import LeafAxes
from autontk.methods.structured.interpreter import UseSpec

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


def pair_kernel(u1: UseSpec, arrays1: tuple[jax.Array, list],
                u2: UseSpec, arrays2: tuple[jax.Array, list],
                axes: LeafAxes, batch_axis: int | None,
                theta_shape: Sequence[int], dtype: Any,
                precision: Any = None, optimize: Any = "auto",
                leaf: int = 0, shape1: Sequence[int] = (),
                shape2: Sequence[int] = ()) -> jax.Array:
  """``Σ_θ J1[a1, θ] J2[a2, θ]`` for one output leaf, kernel layout.

  Args:
    u1, u2: the static descriptions of the two uses (same parameter).
    arrays1, arrays2: ``(cot, factors)`` of each use for this leaf; with a
      ``batch_axis`` every array has the example axis first.
    axes: the leaf's trace/diagonal axes.
    batch_axis: the leaf's batch axis under ``vmap_axes``, else ``None``.
    leaf: the output leaf's index (for the uses' identity cotangents).
    shape1, shape2: the leaf's shapes for x1 and x2.
    theta_shape: shape of the parameter leaf.
    dtype: the kernel dtype.

  Returns:
    The (not yet trace-normalised) kernel block of this pair.
  """
  s1, s2, out = axes.sublists()
  counter = [2 * axes.ndim]

  def fresh() -> int:
    counter[0] += 1
    return counter[0] - 1

  theta_ids = [fresh() for _ in theta_shape]
  operands: list[tuple[jax.Array, list[int]]] = []
  index_sides: list[tuple[int, int, jax.Array, list[int]]] = []
  parent: dict[int, int] = {}  # union-find over labels (identity cotangents)
  sign = 1.0

  def find(l: int) -> int:
    while parent.get(l, l) != l:
      l = parent[l]
    return l

  def union(a: int, b: int) -> None:
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)

  for u, (cot, factors), s, shape in ((u1, arrays1, s1, shape1),
                                      (u2, arrays2, s2, shape2)):
    local = {l: theta_ids[k] for k, l in enumerate(u.theta_labels)}

    def g(l, local=local):
      if l not in local:
        local[l] = fresh()
      return local[l]

    if batch_axis is None:
      batch, a = [], list(s)
    else:
      batch = [s[batch_axis]]
      a = [s[i] for i in range(axes.ndim) if i != batch_axis]
    ident = u.identity[leaf] if u.identity else None
    if ident is None:
      operands.append((cot, batch + a + [g(l) for l in u.cot_labels]))
    else:
      # The cotangent is the identity: the use's output axes *are* the
      # kernel's output axes on this side.
      # Only size-1 axes may differ between them.
      sign *= ident
      a_sizes = [shape[i] for i in range(axes.ndim) if i != batch_axis]
      a_big = [l for l, n in zip(a, a_sizes) if n != 1]
      y_big = [l for l, n in zip(u.cot_labels, u.out_shape) if n != 1]
      for out_label, l in zip(a_big, y_big):
        union(out_label, g(l))
    for f, arr in zip(u.factors, factors):
      if f.index_label is not None:
        k = u.theta_labels.index(f.index_label)
        index_sides.append((k, f.index_size, arr,
                            batch + [g(l) for l in f.labels]))
      else:
        operands.append((arr, batch + [g(l) for l in f.labels]))

  # Index factors: paired on the same θ axis they become an equality mask;
  # any other one becomes an explicit one-hot operand.
  by_axis: dict[int, list] = {}
  consumed: set[int] = set()
  for entry in index_sides:
    by_axis.setdefault(entry[0], []).append(entry)
  for k, entries in by_axis.items():
    if (len(entries) == 2 and _only_in_index(operands, theta_ids[k]) and
        find(theta_ids[k]) == theta_ids[k] and
        all(find(l) == l for _, _, _, ls in entries for l in ls)):
      (_, _, i1, l1), (_, _, i2, l2) = entries
      batched = batch_axis is not None
      shared = batched and l1[0] == l2[0]
      eq = _index_pair(i1, i2, batched, shared).astype(dtype)
      labels = l1 + (l2[1:] if shared else l2)
      operands.append((eq, labels))
      consumed.add(theta_ids[k])  # summed inside the equality mask
    else:
      for _, size, idx, labels in entries:
        operands.append((jax.nn.one_hot(idx, size, dtype=dtype),
                         labels + [theta_ids[k]]))

  operands = [(arr, [find(l) for l in ls]) for arr, ls in operands]
  # A label no operand carries means J is constant along it (a θ axis that
  # was summed or broadcast, an output axis of an identity cotangent): it
  # enters as ones, i.e. as a factor of its size when summed.
  sizes = dict(zip(theta_ids, theta_shape))
  sizes.update(zip(s1, shape1))
  sizes.update(zip(s2, shape2))
  carried = {l for _, ls in operands for l in ls} | consumed
  for l, n in sizes.items():
    r = find(l)
    if r not in carried:
      carried.add(r)
      operands.append((jnp.ones((n,), dtype), [r]))
  reps = [find(l) for l in out]
  unique = list(dict.fromkeys(reps))
  result = _einsum(operands, unique, dtype, precision, optimize)
  if len(unique) < len(out):
    # Output labels merged by identity cotangents: spread the result onto
    # the diagonal they imply (e.g. δ_ab for a last layer's outputs).
    out_sizes = dict(zip(unique, result.shape))
    ops, final, seen = [(result, unique)], [], set()
    for r in reps:
      if r in seen:
        l = fresh()
        ops.append((jnp.eye(out_sizes[r], dtype=dtype), [r, l]))
        final.append(l)
      else:
        seen.add(r)
        final.append(r)
    result = _einsum(ops, final, dtype, precision, "auto")
  return result if sign == 1.0 else sign * result


def _einsum(operands, out_labels, dtype, precision, optimize) -> jax.Array:
  used = sorted({l for _, ls in operands for l in ls} | set(out_labels))
  if len(used) > len(_LETTERS):
    raise ValueError("structured_derivatives: too many einsum labels "
                     f"({len(used)}) for one contraction.")
  letter = {l: _LETTERS[i] for i, l in enumerate(used)}
  spec = ",".join("".join(letter[l] for l in ls) for _, ls in operands)
  spec += "->" + "".join(letter[l] for l in out_labels)
  return jnp.einsum(spec, *[a.astype(dtype) for a, _ in operands],
                    optimize=optimize, precision=precision)


def _only_in_index(operands, label: int) -> bool:
  return all(label not in ls for _, ls in operands)
