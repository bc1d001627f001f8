"""The exact NTK algorithms, one module each, behind one registry.

A method is a function ``method(problem: NtkProblem, config) -> list[Array]``
returning one kernel per output leaf in the kernel layout (see
:mod:`autontk._axes`), already divided by the traced axes' size. ``config``
is the method's frozen options dataclass (or ``None`` for its defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from autontk._options import Implementation

MethodFn = Callable[..., list]


@dataclasses.dataclass(frozen=True)
class MethodRecord:
  implementation: Implementation
  compute: MethodFn
  config_type: type | None = None


_REGISTRY: dict[Implementation, MethodRecord] = {}


def register(implementation: Implementation, config_type: type | None = None):
  """Decorator registering ``compute`` as the method for ``implementation``."""
  def wrap(fn: MethodFn) -> MethodFn:
    _REGISTRY[implementation] = MethodRecord(implementation, fn, config_type)
    return fn
  return wrap


def get(implementation: Implementation) -> MethodRecord:
  _load_all()
  try:
    return _REGISTRY[implementation]
  except KeyError:
    raise NotImplementedError(
        f"No method is registered for {implementation.name.lower()!r}.") from None


def available() -> tuple[Implementation, ...]:
  _load_all()
  return tuple(i for i in Implementation if i in _REGISTRY)


def _load_all() -> None:
  # Imported here, not at the top: the method modules import this registry.
  from autontk.methods import jacobian_contraction  # noqa: F401
  from autontk.methods import ntk_vector_products  # noqa: F401
  from autontk.methods import structured  # noqa: F401


def compute(implementation: Implementation, problem: Any,
            config: Any = None) -> list:
  record = get(implementation)
  if not problem.theta:
    return problem.zeros()
  try:
    return record.compute(problem, config)
  except ValueError as e:
    # Loops with a dynamic trip count (while_loop, fori_loop with traced
    # bounds) have no reverse mode, which methods 2 and 3 need; forward-mode
    # Jacobian contraction is the exact method left.
    from autontk.methods import jacobian_contraction as jc
    if (implementation is Implementation.JACOBIAN_CONTRACTION or
        not jc.is_autodiff_mode_error(e)):
      raise
    _warn_fallback(implementation, e)
    return jc.compute(problem, jc.JacobianContractionConfig(mode="fwd"))


def _warn_fallback(implementation: Implementation, e: Exception) -> None:
  import warnings
  warnings.warn(
      f"autontk: {implementation.name.lower()} needs reverse-mode "
      f"differentiation, which this model does not support ({e}); computing "
      f"the kernel with forward-mode Jacobian contraction instead.",
      RuntimeWarning, stacklevel=3)
