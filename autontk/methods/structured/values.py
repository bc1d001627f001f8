"""What the walk passes around: values, uses, plan steps, the registry.

A walk of the linearised network (:mod:`.walk`) holds, per jaxpr variable,
a :class:`Const` (no dependence on θ), a :class:`Param` (θ or a view of
it) or a :class:`Lin` (a tangent). Discovery records :class:`Use` s in a
:class:`Registry` and its decisions as plan steps, which probing replays.
:func:`over_levels` maps per-iteration code over the leading loop axes that
values carry inside loop bodies during discovery.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk.methods.structured import rule_table
from autontk.methods.structured.regions import Region

LIVE = object()  # discovery-time value of a tangent that depends on θ


@dataclasses.dataclass(frozen=True)
class Const:
  """A value that does not depend on θ (residual, literal); inside loop
  bodies during discovery it has one leading axis per enclosing loop."""

  value: Any


@dataclasses.dataclass(frozen=True)
class Param:
  """Parameter leaf ``index`` (or the part ``region`` of it) itself."""

  index: int
  region: Region


@dataclasses.dataclass(frozen=True)
class Lineage:
  """Which probes a tangent holds, during discovery.

  ``ident`` maps a probe to ±1 where the tangent *is* ``±probe + (terms
  without it)``: reached through sums, negations and casts only. ``other``
  holds the probes that reach it any other way.
  """

  ident: tuple[tuple[int, float], ...] = ()
  other: frozenset[int] = frozenset()

  def keys(self) -> set[int]:
    return {k for k, _ in self.ident} | set(self.other)


def mixed(lineages: Sequence[Lineage], extra: Sequence[int] = ()) -> Lineage:
  keys = set(extra).union(*[l.keys() for l in lineages])
  return Lineage((), frozenset(keys))


def summed(lineages: Sequence[Lineage], signs: Sequence[float]) -> Lineage:
  ident: dict[int, float] = {}
  other: set[int] = set()
  for l, sign in zip(lineages, signs):
    other |= l.other
    for k, s in l.ident:
      if k in ident:
        other.add(k)
      else:
        ident[k] = s * sign
  return Lineage(tuple((k, s) for k, s in sorted(ident.items())
                       if k not in other), frozenset(other))


@dataclasses.dataclass(frozen=True)
class Lin:
  """A tangent: an array, ``None`` (zero) or :data:`LIVE` in discovery."""

  value: Any
  lineage: Lineage = Lineage()


@dataclasses.dataclass(frozen=True)
class Use:
  """Parameter ``param`` (its ``region``) consumed behind probe ``probe``.

  Attributes:
    ctx: the consuming equation; ``None`` when the value itself is a
      tangent (an output, a loop carry). Its constant inputs carry one
      leading axis per loop in ``lengths``.
    lengths: trip counts of the loops around the use, outermost first.
  """

  probe: int
  param: int
  region: Region
  ctx: rule_table.UseContext | None
  lengths: tuple[int, ...] = ()


# Plan steps ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PassStep:
  """The equation returns θ itself (a cast, a placement hint)."""


@dataclasses.dataclass(frozen=True)
class ViewStep:
  region: Region


@dataclasses.dataclass(frozen=True)
class UseStep:
  probe: int


@dataclasses.dataclass(frozen=True)
class LoopStep:
  """A ``scan`` walked structurally.

  Attributes:
    plan: the body's plan.
    probes: the probes of uses inside the body (stacked over iterations).
    carried: ``(input position, probe)`` of parameters entering as carry.
  """

  plan: tuple
  probes: tuple[int, ...]
  carried: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class CondStep:
  """A ``cond`` whose branch is chosen at run time, each branch walked."""

  plans: tuple[tuple, ...]
  probes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class BranchStep:
  """A ``cond`` whose branch is known at trace time: walked in line."""

  branch: int


@dataclasses.dataclass(frozen=True)
class WhileStep:
  """A ``while`` with a trip count known at trace time, rewritten as a
  ``scan`` of that length and linearised again (``linear``, walked in
  line); ``primal`` holds the loop's outputs at zero tangents."""

  linear: Any
  primal: tuple[Any, ...]


@dataclasses.dataclass
class Registry:
  """Uses and probes of one discovery, shared by every walk within it."""

  theta_avals: Sequence[Any]
  uses: list[Use] = dataclasses.field(default_factory=list)
  probe_avals: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)

  def new_probe(self, avals: Sequence[Any]) -> int:
    self.probe_avals.append(tuple(avals))
    return len(self.probe_avals) - 1


@dataclasses.dataclass(frozen=True)
class WalkOptions:
  """Which structure the walk follows (see ``StructuredConfig``)."""

  views: bool = True
  loops: bool = True
  unroll_up_to: int = 0


def inexact(aval) -> bool:
  return jnp.issubdtype(aval.dtype, jnp.inexact)


def over_levels(fn: Callable[..., Any], args: Sequence[Any],
                lengths: Sequence[int]) -> Any:
  """``fn`` on one iteration, mapped over leading loop axes.

  Each arg (an array, or ``None``) has one leading axis per entry of
  ``lengths``, of that length or of size 1 (invariant along that loop). An
  output varies along a loop only if some input does (else it keeps a
  size-1 axis there).
  """
  if not lengths:
    return fn(*args)
  vary = [a is not None and np.shape(a)[0] != 1 for a in args]
  inner = [a if v or a is None else a[0] for a, v in zip(args, vary)]

  def rest(*xs):
    return over_levels(fn, xs, lengths[1:])

  if not any(vary):
    return jax.tree.map(lambda o: o[None], rest(*inner))
  in_axes = [0 if v else None for v in vary]
  return jax.vmap(rest, in_axes=in_axes)(*inner)


def lift(value: Any, depth: int) -> Any:
  """A loop-invariant value with ``depth`` leading size-1 axes."""
  if depth == 0:
    return value
  if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
    return np.reshape(value, (1,) * depth + np.shape(value))
  return jnp.reshape(value, (1,) * depth + jnp.shape(value))
