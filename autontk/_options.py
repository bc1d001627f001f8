"""User-facing options: the NTK implementation enum and the option record."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from autontk._types import Axes, VMapAxes


class Implementation(enum.Enum):
  """How the empirical NTK is computed.

  The values mirror neural-tangents' ``NtkImplementation`` integers, so
  ``implementation=1`` means the same thing in both libraries.

  Attributes:
    AUTO: let autontk's planner choose the method and the batch chunking from
      a cost model (and, optionally, timings), per call signature.
    JACOBIAN_CONTRACTION: materialise J(x1), J(x2) and contract them. Costs
      N·O·[FP] + N²·O²·P. Wins for small outputs O and an expensive forward
      pass (e.g. CNNs with heavy weight sharing).
    NTK_VECTOR_PRODUCTS: build Θ column by column from VJPs followed by JVPs,
      never holding a Jacobian of more than one cotangent. Costs N²·O·[FP].
      Wins when the forward pass is cheap per parameter and O is large, and
      when the Jacobian does not fit in memory.
    STRUCTURED_DERIVATIVES: walk the linearised computation and contract the
      per-primitive Jacobians using their structure (diagonal, broadcast,
      block). Costs N·O·[FP] + Σ MJJMP and is usually the fastest, by orders
      of magnitude on dense layers.
  """

  AUTO = 0
  JACOBIAN_CONTRACTION = 1
  NTK_VECTOR_PRODUCTS = 2
  STRUCTURED_DERIVATIVES = 3

  @classmethod
  def parse(cls, value: Any) -> "Implementation":
    """Accepts an enum member, its name (any case), or the integers 0-3."""
    if isinstance(value, cls):
      return value
    if isinstance(value, bool):
      pass  # bool is an int subclass; never a valid implementation.
    elif isinstance(value, int):
      try:
        return cls(value)
      except ValueError:
        pass
    elif isinstance(value, str):
      key = value.strip().upper().replace("-", "_").replace(" ", "_")
      if key in cls.__members__:
        return cls[key]
    names = ", ".join(repr(m.name.lower()) for m in cls)
    raise ValueError(
        f"`implementation` must be one of {names}, an `autontk.Implementation`"
        f" or an int 0-3 as in neural-tangents; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class NtkOptions:
  """The options of one NTK function, as given by the user (not canonical).

  Axes are canonicalised per output leaf at call time, since a pytree output
  may hold leaves of different ranks.
  """

  trace_axes: tuple[int, ...] = (-1,)
  diagonal_axes: tuple[int, ...] = ()
  vmap_axes: VMapAxes = None
  implementation: Implementation = Implementation.AUTO

  @staticmethod
  def make(trace_axes: Axes, diagonal_axes: Axes, vmap_axes: VMapAxes,
           implementation: Any) -> "NtkOptions":
    return NtkOptions(
        trace_axes=_axes_tuple(trace_axes, "trace_axes"),
        diagonal_axes=_axes_tuple(diagonal_axes, "diagonal_axes"),
        vmap_axes=vmap_axes,
        implementation=Implementation.parse(implementation))


def _axes_tuple(axes: Axes, name: str) -> tuple[int, ...]:
  if axes is None:
    return ()
  if isinstance(axes, (int,)) and not isinstance(axes, bool):
    return (int(axes),)
  try:
    out = tuple(axes)
  except TypeError:
    raise TypeError(
        f"`{name}` must be an int or a sequence of ints; got {axes!r}.") from None
  for a in out:
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
      raise TypeError(
          f"`{name}` must be an int or a sequence of ints; got {axes!r}.")
  return tuple(int(a) for a in out)
