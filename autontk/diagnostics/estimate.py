"""The one result record of every diagnostic: a value with its stated error.

An :class:`Estimate` says what was computed (``value``), how far off it may
be (``error``, and whether that is a standard error, a rigorous bound or
zero because the value is exact), how (``method``, ``probes``) and which
route was taken and why (``route``, ``reason``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

ERROR_KINDS = ("exact", "stderr", "bound")
"""``exact``: no error beyond floating point; ``stderr``: the standard error
of a randomised estimate (its sampling spread, from the probes themselves);
``bound``: a rigorous bound on the distance to the true value (Lanczos
residual bounds on eigenvalues)."""

ROUTES = ("dense", "matrix-free")
"""The two routes: materialise the kernel (or use the given array) and
compute exactly, or work through products ``Θ V`` only."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A diagnostic's value and its stated error.

  Attributes:
    value: a float, or an array (eigenvalues, in descending order).
    error: ``0`` when exact; the standard error (``error_kind="stderr"``) or
      a bound on ``|value - true|`` (``"bound"``), same shape as ``value``.
    error_kind: one of :data:`ERROR_KINDS`.
    method: how it was computed (``"eigh"``, ``"Hutch++"``, ``"Lanczos"``,
      ``"Hutch++ + Lanczos quadrature"``, ``"op.trace"``...).
    probes: random probe vectors used, or kernel columns an eigensolver
      applies (Lanczos steps; LOBPCG priced at 20 iterations of ``3k``);
      ``0`` for a dense computation.
    route: ``"dense"`` or ``"matrix-free"`` (:data:`ROUTES`).
    reason: why that route (the priced comparison, or that it was forced).

  >>> Estimate(2.0, 0.1, "stderr", "Hutch++", 40, "matrix-free", "forced")
  Estimate(2 ± 0.1 (stderr), Hutch++, 40 probes, matrix-free: forced)
  """

  value: Any
  error: Any = 0.0
  error_kind: str = "exact"
  method: str = ""
  probes: int = 0
  route: str = "dense"
  reason: str = ""

  def __post_init__(self):
    if self.error_kind not in ERROR_KINDS:
      raise ValueError(f"error_kind must be one of {ERROR_KINDS}; got "
                       f"{self.error_kind!r}.")
    if self.route not in ROUTES:
      raise ValueError(f"route must be one of {ROUTES}; got {self.route!r}.")

  @property
  def exact(self) -> bool:
    """Whether the value is exact (up to floating point)."""
    return self.error_kind == "exact"

  def interval(self, z: float = 3.0) -> tuple[Any, Any]:
    """The error bar ``(low, high)``: ``value ∓ z·error`` for a standard
    error, ``value ∓ error`` for a bound, ``(value, value)`` when exact.

    The default ``z = 3`` covers about 99 % even with the heavier tails of
    a standard error taken from some twenty probes (Student's t)."""
    half = np.asarray(self.error) * (z if self.error_kind == "stderr" else 1)
    low, high = np.asarray(self.value) - half, np.asarray(self.value) + half
    if np.ndim(self.value) == 0:
      return float(low), float(high)
    return low, high

  def __repr__(self) -> str:
    if self.exact:
      err = "(exact)"
    else:
      err = f"± {_fmt(self.error)} ({self.error_kind})"
    how = self.method + (f", {self.probes} probes" if self.probes else "")
    where = self.route + (f": {self.reason}" if self.reason else "")
    return f"Estimate({_fmt(self.value)} {err}, {how}, {where})"


def _fmt(v: Any) -> str:
  if np.ndim(v) == 0:
    v = float(v)
    return repr(v) if math.isinf(v) or math.isnan(v) else f"{v:.6g}"
  return np.array2string(np.asarray(v, dtype=float), precision=4,
                         separator=", ", threshold=8)
