"""The method registry: one record per exact NTK method.

A method module registers its ``compute(problem, config) -> list[Array]``
(one kernel per output leaf, in the kernel layout of :mod:`autontk._axes`,
divided by the traced axes' size) with :func:`register`, together with its
options dataclass and, where it has them, its memory variants: configs that
trade speed for memory (NTK-vector products' column chunks). The planner
offers those variants as candidates; the cost model asks the record how many
loop iterations a variant adds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from autontk._options import Implementation

MethodFn = Callable[..., list]


def _no_variants(problem: Any) -> tuple[Any, ...]:
  del problem
  return ()


def _no_iterations(problem: Any, config: Any) -> int:
  del problem, config
  return 0


@dataclasses.dataclass(frozen=True)
class MethodRecord:
  """One registered method.

  Attributes:
    implementation: which method.
    compute: ``compute(problem, config) -> list of kernels``.
    config_type: its options dataclass (``None``: no options).
    memory_variants: ``problem -> configs`` that use less memory than the
      default config (slower); empty for most methods.
    loop_iterations: ``(problem, config) -> int``, the compiled loop
      iterations a memory variant adds over the default config (XLA counts
      a loop body once, so the cost model charges them separately).
  """

  implementation: Implementation
  compute: MethodFn
  config_type: type | None = None
  memory_variants: Callable[[Any], tuple[Any, ...]] = _no_variants
  loop_iterations: Callable[[Any, Any], int] = _no_iterations

  def is_memory_variant(self, problem: Any, config: Any) -> bool:
    """``config`` is one of this method's memory variants."""
    return config is not None and self.loop_iterations(problem, config) > 0


_REGISTRY: dict[Implementation, MethodRecord] = {}


def register(implementation: Implementation, config_type: type | None = None,
             *, memory_variants: Callable[[Any], tuple[Any, ...]] | None = None,
             loop_iterations: Callable[[Any, Any], int] | None = None):
  """Decorator registering ``compute`` as the method for ``implementation``."""
  def wrap(fn: MethodFn) -> MethodFn:
    _REGISTRY[implementation] = MethodRecord(
        implementation, fn, config_type, memory_variants or _no_variants,
        loop_iterations or _no_iterations)
    return fn
  return wrap


def get(implementation: Implementation) -> MethodRecord:
  """The record of ``implementation`` (raises if none is registered)."""
  try:
    return _REGISTRY[implementation]
  except KeyError:
    raise NotImplementedError(
        f"No method is registered for {implementation.name.lower()!r}."
    ) from None


def available() -> tuple[Implementation, ...]:
  """Registered methods, in enum order."""
  return tuple(i for i in Implementation if i in _REGISTRY)
