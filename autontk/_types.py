"""Type aliases and protocols shared across autontk."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, Union

import jax
import jax.numpy as jnp

PyTree = Any
"""A JAX pytree (nested tuples, lists, dicts, dataclasses... of arrays)."""

Axes = Union[int, Sequence[int]]
"""One output axis or a sequence of output axes (negative values allowed)."""

VMapAxes = Any
"""``None``, an int, a pytree of ints, or an ``(in_axes, out_axes, kwargs_axes)``
triple, as accepted by neural-tangents' ``empirical_ntk_fn``."""

ApplyFn = Callable[..., PyTree]
"""A network ``f(params, x, **kwargs) -> PyTree`` of arrays."""

Array = jax.Array

CONCRETE_ARRAY = type(jnp.zeros(()))
"""The concrete ``jax.Array`` type, recognised by ``type(v) is
CONCRETE_ARRAY`` without an attribute lookup (a failed lookup raises, and
raising costs microseconds): what the per-call paths test leaves with."""


class Planner(Protocol):
  """What an :class:`~autontk.NtkFn` asks about its calls.

  ``ntk_fn`` hands every NtkFn one (for ``implementation="auto"`` it chooses
  the plan; for every implementation it writes the cost report).
  """

  def plan(self, ntk: Any, x1: PyTree, x2: PyTree | None, params: PyTree,
           kwargs: dict[str, Any]) -> Any:
    """The :class:`~autontk.Plan` for this call."""
    ...

  def report(self, ntk: Any, x1: PyTree, x2: PyTree | None, params: PyTree,
             kwargs: dict[str, Any]) -> Any:
    """The :class:`~autontk.CostReport` for this call."""
    ...


class KernelOperator(Protocol):
  """A symmetric positive semi-definite kernel as a linear operator.

  What :mod:`autontk.solvers` solve with: :class:`autontk.MatrixOperator`
  (a dense kernel) and :class:`autontk.NtkOperator` (matrix-free). ``matmat``
  must be traceable by JAX (the solvers call it inside ``jax.jit``,
  ``jax.vmap`` and ``lax.while_loop``).
  """

  shape: tuple[int, int]
  """``(M, M)``."""
  dtype: Any

  def matmat(self, v: Array) -> Array:
    """``Θ v`` for ``v`` of shape ``(M,)`` or ``(M, R)``, same shape."""
    ...

  def diag(self) -> Array:
    """``(M,)``."""
    ...

  def trace(self) -> Array:
    """The exact trace."""
    ...

  def to_dense(self) -> Array:
    """The ``(M, M)`` matrix."""
    ...
