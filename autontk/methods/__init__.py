"""The exact NTK algorithms, one module each, behind one registry.

A method is a function ``method(problem: NtkProblem, config) -> list[Array]``
returning one kernel per output leaf in the kernel layout (see
:mod:`autontk._axes`), already divided by the traced axes' size. ``config``
is the method's frozen options dataclass (or ``None`` for its defaults).
Importing this package registers every method (:mod:`.registry`): each
method module is imported below, and the import fails if an
``Implementation`` is left without one.
"""

from __future__ import annotations

import warnings
from typing import Any

from autontk._options import Implementation
from autontk.methods import jacobian_contraction as _jc
from autontk.methods import ntk_vector_products  # noqa: F401  (registers)
from autontk.methods import structured  # noqa: F401  (registers)
from autontk.methods.registry import (MethodRecord, UnsupportedJaxError,
                                      available, check_complete, get,
                                      register, registered)

__all__ = ["MethodRecord", "UnsupportedJaxError", "available", "compute",
           "get", "register", "registered"]

check_complete()


def compute(implementation: Implementation, problem: Any,
            config: Any = None) -> list:
  """Kernels of ``problem`` with ``implementation`` and its ``config``."""
  record = get(implementation)
  record.check_supported()
  if not problem.theta:
    return problem.zeros()
  try:
    return record.compute(problem, config)
  except ValueError as e:
    # Loops with a dynamic trip count (while_loop, fori_loop with traced
    # bounds) have no reverse mode, which methods 2 and 3 need; forward-mode
    # Jacobian contraction is the exact method left.
    if (implementation is Implementation.JACOBIAN_CONTRACTION or
        not _jc.is_autodiff_mode_error(e)):
      raise
    _warn_fallback(implementation, e)
    return _jc.compute(problem, _jc.JacobianContractionConfig(mode="fwd"))


def _warn_fallback(implementation: Implementation, e: Exception) -> None:
  warnings.warn(
      f"autontk: {implementation.name.lower()} needs reverse-mode "
      f"differentiation, which this model does not support ({e}); computing "
      f"the kernel with forward-mode Jacobian contraction instead.",
      RuntimeWarning, stacklevel=3)
