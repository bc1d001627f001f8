"""Dense or matrix-free: one rule, priced in floating-point operations.

The dense route materialises the ``M × M`` kernel (unless it was given as an
array) and computes the answer exactly; the matrix-free route applies the
kernel to a few blocks of vectors. Each question states its two prices
(:class:`Question`); the kernel states what forming it and one column of
``Θ V`` cost (:class:`Pricing`). The rule (:func:`choose`):

1. a forced ``route`` wins;
2. the dense route is refused when the kernel is not given as an array and
   its ``M²`` float64 entries exceed ``memory_budget``;
3. otherwise the cheaper of ``kernel_flops + dense_flops`` (e.g. ``M³/3``
   for ``eigh``) and ``columns × apply_flops`` is taken, ties to dense
   (exact).

The result's ``reason`` states the comparison.
"""

from __future__ import annotations

import dataclasses

DEFAULT_MEMORY_BUDGET = 2 ** 30
"""Bytes a materialised kernel may take (1 GiB) unless told otherwise."""

FORCED = ("dense", "matrix-free")


@dataclasses.dataclass(frozen=True)
class Pricing:
  """What one kernel costs.

  Attributes:
    m: its size ``M``.
    apply_flops: one column of ``Θ V``.
    kernel_flops: materialising it; ``0`` when it is already an array.
    given_dense: it was given as an array (no memory is added by using it).
    note: how the prices were obtained.
  """

  m: int
  apply_flops: float
  kernel_flops: float
  given_dense: bool
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Question:
  """What one diagnostic costs on each route.

  Attributes:
    dense_flops: the dense computation once the kernel(s) are formed.
    columns: kernel columns ``Θ v`` the matrix-free route applies.
    kernels: how many kernels are formed on the dense route (2 for a
      distance between checkpoints).
  """

  dense_flops: float
  columns: float
  kernels: int = 1


def choose(question: Question, pricing: Pricing, route: str = "auto",
           memory_budget: float | None = None) -> tuple[str, str]:
  """``(route, reason)`` for ``question`` on a kernel priced ``pricing``.

  Args:
    question: its two prices.
    pricing: the kernel's.
    route: ``"auto"``, or ``"dense"`` / ``"matrix-free"`` to force one.
    memory_budget: bytes a materialised kernel may take (default
      :data:`DEFAULT_MEMORY_BUDGET`).

  >>> q = Question(dense_flops=1e9 / 3, columns=60)
  >>> choose(q, Pricing(1000, 2e6, 0.0, True))[0]
  'matrix-free'
  """
  if route in FORCED:
    return route, f"forced (route={route!r})"
  if route != "auto":
    raise ValueError(f"route must be 'auto', 'dense' or 'matrix-free'; got "
                     f"{route!r}.")
  budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
  need = question.kernels * pricing.m ** 2 * 8
  if not pricing.given_dense and need > budget:
    return "matrix-free", (f"dense kernel {_bytes(need)} > memory budget "
                           f"{_bytes(budget)}")
  dense = question.kernels * pricing.kernel_flops + question.dense_flops
  free = question.columns * pricing.apply_flops
  verdict = "<=" if dense <= free else ">"
  reason = (f"dense {dense:.3g} FLOPs {verdict} matrix-free {free:.3g} "
            f"({question.columns:.0f} columns)")
  if pricing.note:
    reason += f"; {pricing.note}"
  return ("dense" if dense <= free else "matrix-free"), reason


def _bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.3g} {unit}"
    n /= 1024
  return f"{n} B"
