"""Linear output heads, factored out of the cotangent basis.

The cotangents ``C_u = ∂f/∂y_u`` are computed with one reverse pass per
output entry. When an output is ``s · dot_general(g, W)`` plus uses of
parameters that reach it as themselves (an LM's logits ``h @ Eᵀ / √d``
with ``h`` the last hidden state and the tied embedding ``E`` consumed there
too), every other use reaches it only through ``g``: ``C_u = L · G_u``
with ``L = s · W`` the head's linear map and ``G_u = ∂g/∂y_u``. The basis
then runs over ``g``'s entries (``T·d``) rather than the output's
(``T·V``), and ``L`` enters each pair product as one more einsum operand,
where a traced or diagonal vocabulary axis is contracted at ``W``'s size
(``Σ_v W[v, k] W[v, k']``) rather than at every use's.

:func:`find_heads` reads the linear jaxpr; the walk then checks, from the
probes' lineage, that the output is exactly ``L(g)`` plus identity uses
(:func:`factorable`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from autontk import _compat
from autontk.methods.structured.values import Lineage

_P = _compat.primitives
_ADDS = (_P.add_p, _compat.ADD_ANY)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """``out = scale · dot_general(g, W)`` (+ identity uses), static part.

  Axis roles: ``("o", j)``: the output's axis ``j``; ``("c", i)``: the
  ``i``-th contracted pair of the dot; ``("u", 0)``: a size-1 axis the
  output drops (a batch of one squeezed away).

  Attributes:
    g_shape: ``g``'s shape without the axes the output drops.
    g_axes: per axis of ``g_shape``, its role.
    w_axes: per axis of ``W``, its role.
    n_contract: how many contracted pairs.
    scale: ``s``.
  """

  g_shape: tuple[int, ...]
  g_axes: tuple[tuple[str, int], ...]
  w_axes: tuple[tuple[str, int], ...]
  n_contract: int
  scale: float


@dataclasses.dataclass(frozen=True)
class Head:
  """A head found in a jaxpr: its spec and the variables of ``g`` and
  ``W``."""

  spec: HeadSpec
  g: Any
  w: Any


def _scalar(atom, consts: dict) -> float | None:
  value = atom.val if _compat.is_literal(atom) else consts.get(atom)
  value = None if value is None else _compat.concrete(value)
  if value is None or np.size(value) != 1:
    return None
  return float(np.reshape(value, ()))


def _non_unit(shape) -> tuple[int, ...]:
  return tuple(n for n in shape if n != 1)


def _terms(var, scale: float, producers: dict, consts: dict, shape,
           out: list) -> None:
  """Splits ``var`` into scaled terms through sums, negations, products
  with scalar constants, and reshapes that add or drop size-1 axes."""
  eqn = producers.get(var)
  prim = None if eqn is None else eqn.primitive
  same = eqn is not None and all(
      tuple(v.aval.shape) == shape for v in eqn.invars
      if not _compat.is_literal(v))
  if (prim in (_P.squeeze_p, _P.reshape_p, _P.broadcast_in_dim_p) and
      _non_unit(eqn.invars[0].aval.shape) == _non_unit(shape)):
    _terms(eqn.invars[0], scale, producers, consts,
           tuple(eqn.invars[0].aval.shape), out)
  elif prim in _ADDS and same:
    for v in eqn.invars:
      _terms(v, scale, producers, consts, shape, out)
  elif prim is _P.sub_p and same:
    _terms(eqn.invars[0], scale, producers, consts, shape, out)
    _terms(eqn.invars[1], -scale, producers, consts, shape, out)
  elif prim is _P.neg_p:
    _terms(eqn.invars[0], -scale, producers, consts, shape, out)
  elif prim in (_P.mul_p, _P.div_p) and eqn.invars[0].aval.shape == shape:
    s = _scalar(eqn.invars[1], consts)
    if prim is _P.mul_p and s is None:
      s = _scalar(eqn.invars[0], consts)
      if s is not None:
        _terms(eqn.invars[1], scale * s, producers, consts, shape, out)
        return
    if s is None or s == 0.0:
      out.append((var, scale, eqn))
    else:
      _terms(eqn.invars[0], scale * (s if prim is _P.mul_p else 1 / s),
             producers, consts, shape, out)
  else:
    out.append((var, scale, eqn))


def _dependent(jaxpr) -> set:
  """Variables that depend on the jaxpr's inputs (the tangents of θ)."""
  dep = set(jaxpr.invars)
  for eqn in jaxpr.eqns:
    if any(not _compat.is_literal(v) and v in dep for v in eqn.invars):
      dep.update(eqn.outvars)
  return dep


def _align(dot_shape, out_shape) -> list[int | None] | None:
  """Per axis of the dot's output, the output's axis it is (``None``: a
  size-1 axis the output drops); ``None`` if they differ otherwise."""
  mapping, j = [], 0
  for n in dot_shape:
    while j < len(out_shape) and out_shape[j] == 1 and n != 1:
      j += 1
    if j < len(out_shape) and out_shape[j] == n:
      mapping.append(j)
      j += 1
    elif n == 1:
      mapping.append(None)
    else:
      return None
  if any(n != 1 for n in out_shape[j:]):
    return None
  return mapping


def _head_spec(eqn, g_pos: int, scale: float, out_shape) -> HeadSpec | None:
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  nd = [len(v.aval.shape) for v in eqn.invars]
  contract, batch = (lc, rc), (lb, rb)
  free = [[i for i in range(nd[s]) if i not in contract[s] and
           i not in batch[s]] for s in (0, 1)]
  roles: list[dict[int, tuple[str, int]]] = [{}, {}]
  for s in (0, 1):
    for j, i in enumerate(batch[s]):
      roles[s][i] = ("o", j)
    for j, i in enumerate(contract[s]):
      roles[s][i] = ("c", j)
  start = [len(lb), len(lb) + len(free[0])]
  for s in (0, 1):
    for j, i in enumerate(free[s]):
      roles[s][i] = ("o", start[s] + j)
  to_out = _align(tuple(eqn.outvars[0].aval.shape), out_shape)
  if to_out is None:
    return None

  def placed(role):
    if role[0] != "o":
      return role
    return ("u", 0) if to_out[role[1]] is None else ("o", to_out[role[1]])

  axes = [[placed(roles[s][i]) for i in range(nd[s])] for s in (0, 1)]
  g_shape = eqn.invars[g_pos].aval.shape
  kept = [i for i, r in enumerate(axes[g_pos]) if r[0] != "u"]
  if len(kept) != len(out_shape):
    return None
  return HeadSpec(tuple(g_shape[i] for i in kept),
                  tuple(axes[g_pos][i] for i in kept),
                  tuple(axes[1 - g_pos]), len(lc), scale)


def find_heads(closed) -> list[Head | None]:
  """Per output of a linear jaxpr, its linear head, or ``None``.

  A head is the one term of the output (through sums, scalar factors and
  size-1 axes) that is a ``dot_general`` of a tangent ``g`` with a constant
  ``W``, where ``g`` has the output's axes (up to size-1 ones) and at most
  half its entries.
  """
  jaxpr = closed.jaxpr
  producers = {v: e for e in jaxpr.eqns for v in e.outvars}
  consts = dict(zip(jaxpr.constvars, closed.consts))
  dep = _dependent(jaxpr)
  heads: list[Head | None] = []
  for out in jaxpr.outvars:
    if _compat.is_literal(out) or out not in dep:
      heads.append(None)
      continue
    shape = tuple(out.aval.shape)
    terms: list = []
    _terms(out, 1.0, producers, consts, shape, terms)
    found = []
    for _, scale, eqn in terms:
      if eqn is None or eqn.primitive is not _P.dot_general_p:
        continue
      lhs, rhs = eqn.invars
      is_dep = [not _compat.is_literal(v) and v in dep for v in (lhs, rhs)]
      if is_dep.count(True) != 1:
        continue
      g_pos = is_dep.index(True)
      g = eqn.invars[g_pos]
      spec = _head_spec(eqn, g_pos, scale, shape)
      if spec is not None and 2 * math.prod(g.aval.shape) <= math.prod(shape):
        found.append(Head(spec, g, eqn.invars[1 - g_pos]))
    heads.append(found[0] if len(found) == 1 else None)
  return heads


def factorable(out: Lineage, g: Lineage) -> bool:
  """Whether the output is exactly ``L(g)`` plus identity uses: every
  probe reaching it reaches it through ``g`` or as itself."""
  ident = {k for k, _ in out.ident}
  return out.keys() <= (g.keys() | ident) and not (g.keys() & ident)
