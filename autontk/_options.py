"""User-facing options: the NTK implementation enum and the option record."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from typing import Any

import jax
import numpy as np

from autontk._types import Axes, VMapAxes
from autontk.selection import ParamSelection

PRECISIONS = ("default", "high", "highest")
"""``precision`` values: ``jax.lax.Precision`` names. ``"default"`` lets the
backend choose (TF32 passes on recent NVIDIA GPUs, one bfloat16 pass on
TPUs); ``"highest"`` keeps float32 (several passes where needed). CPUs
compute float32 matmuls in float32 either way."""


NTK_OPTION_NAMES = ("trace_axes", "diagonal_axes", "vmap_axes", "wrt",
                    "groups", "pseudo_axes", "precision")
"""The NTK options of :func:`autontk.ntk_fn` beside ``implementation``, by
keyword name: what :meth:`NtkOptions.of` takes, and what ``tune``,
``model_signature`` and the CLI's model factories pass through."""


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

  Attributes:
    trace_axes, diagonal_axes, vmap_axes, implementation: as in
      :func:`autontk.ntk_fn`.
    selection: ``wrt`` and ``groups`` (``None``: every floating-point
      leaf, one kernel).
    pseudo_axes: output axes the pseudo-NTK sums (``None``: the NTK).
    precision: matmul precision of every contraction (``None``: JAX's
      ``jax_default_matmul_precision`` at the time of tracing).
  """

  trace_axes: tuple[int, ...] = (-1,)
  diagonal_axes: tuple[int, ...] = ()
  vmap_axes: VMapAxes = None
  implementation: Implementation = Implementation.AUTO
  selection: ParamSelection | None = None
  pseudo_axes: tuple[int, ...] | None = None
  precision: str | None = None

  @staticmethod
  def make(trace_axes: Axes, diagonal_axes: Axes, vmap_axes: VMapAxes,
           implementation: Any, *, wrt: Any = None, groups: Any = None,
           pseudo_axes: Axes | None = None,
           precision: Any = None) -> "NtkOptions":
    if pseudo_axes is not None:
      pseudo_axes = _axes_tuple(pseudo_axes, "pseudo_axes")
      if not pseudo_axes:
        raise ValueError("`pseudo_axes` must name at least one output axis.")
    return NtkOptions(
        trace_axes=_axes_tuple(trace_axes, "trace_axes"),
        diagonal_axes=_axes_tuple(diagonal_axes, "diagonal_axes"),
        vmap_axes=vmap_axes,
        implementation=Implementation.parse(implementation),
        selection=ParamSelection.make(wrt, groups),
        pseudo_axes=pseudo_axes, precision=parse_precision(precision))

  @staticmethod
  def of(implementation: Any = "auto", **options: Any) -> "NtkOptions":
    """The options named as :func:`autontk.ntk_fn`'s keyword arguments
    (:data:`NTK_OPTION_NAMES`), its defaults for those not given: the one
    place a spelling (``trace_axes=-1``) becomes the record
    (``(-1,)``).

    >>> NtkOptions.of(trace_axes=-1) == NtkOptions.of()
    True
    """
    unknown = sorted(set(options) - set(NTK_OPTION_NAMES))
    if unknown:
      raise TypeError(f"Unknown NTK options {unknown}; the options are "
                      f"{', '.join(NTK_OPTION_NAMES)}.")
    return NtkOptions.make(
        options.get("trace_axes", (-1,)), options.get("diagonal_axes", ()),
        options.get("vmap_axes"), implementation, wrt=options.get("wrt"),
        groups=options.get("groups"), pseudo_axes=options.get("pseudo_axes"),
        precision=options.get("precision"))

  @property
  def grouped(self) -> bool:
    return self.selection is not None and self.selection.groups is not None

  def precision_scope(self):
    """A context in which JAX traces every matmul and convolution with
    ``precision`` (a no-op for ``None``)."""
    if self.precision is None:
      return contextlib.nullcontext()
    return jax.default_matmul_precision(self.precision)

  def describe(self) -> str:
    """The kernel options beyond the axes, for reprs and reports."""
    parts = []
    if self.selection is not None:
      parts.append(self.selection.describe())
    if self.pseudo_axes is not None:
      parts.append(f"pseudo_axes={self.pseudo_axes}")
    parts.append(f"precision={effective_precision(self.precision)}")
    return ", ".join(parts)


def split_ntk_options(kwargs: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(NTK options, the rest)`` of keyword arguments, by name."""
  options = {k: v for k, v in kwargs.items() if k in NTK_OPTION_NAMES}
  return options, {k: v for k, v in kwargs.items() if k not in options}


def parse_precision(value: Any) -> str | None:
  """``None`` or one of :data:`PRECISIONS` (also from a
  ``jax.lax.Precision``)."""
  if value is None:
    return None
  if isinstance(value, jax.lax.Precision):
    value = value.name
  if isinstance(value, str) and value.lower() in PRECISIONS:
    return value.lower()
  raise ValueError(f"`precision` must be None or one of {PRECISIONS}; got "
                   f"{value!r}.")


def effective_precision(precision: str | None) -> str:
  """The precision a trace uses now: ``precision``, else JAX's default
  matmul precision setting, else ``"default"``."""
  if precision is not None:
    return precision
  current = jax.config.jax_default_matmul_precision
  return str(current).lower() if current else "default"


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
