"""The spectrum: extreme eigenvalues, the condition number and the trace.

Every function takes ``kernel`` in any form :mod:`autontk.diagnostics.sources`
accepts (a dense array, a kernel operator, a dict of them per group, or a
network ``f`` with ``x=`` and ``params=``) and these keywords:

* ``x``, ``params``, ``wrt``, ``groups``, ``trace_axes``, ``kwargs``: the
  network's inputs, parameters, parameter selection and grouping, traced
  output axes and keyword arguments, as for :func:`autontk.ntk_fn`;
* ``route``: ``"auto"`` (priced per question, see
  :func:`autontk.route.choose`), ``"dense"`` or ``"matrix-free"``;
* ``memory_budget``: bytes a materialised kernel may take;
* ``seed``: the random probes' seed.

Each returns an :class:`~autontk.diagnostics.Estimate`, or ``{group:
Estimate}`` with groups (``groups=`` or a dict of kernels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autontk import solvers
from autontk.diagnostics import randomized, sources
from autontk.diagnostics.estimate import Estimate
from autontk.diagnostics.sources import Kernel
from autontk.route import Question, choose

EIG_STEPS = 60
"""Default Lanczos steps for extreme eigenvalues (raised to ``2k``)."""


LOBPCG_ITERATIONS = 20
"""Iterations LOBPCG is priced at (each a product with ``3k`` columns)."""


def _lobpcg(kern: Kernel, which: str) -> bool:
  """LOBPCG for the top of an operator's spectrum. Lanczos otherwise: on an
  array (its float64 products kept) and for the bottom, where LOBPCG on
  ``c·I - Θ`` stalls on the clustered small eigenvalues of a kernel."""
  return kern.op is not None and which == "largest"


def _columns(kern: Kernel, k: int, which: str, steps: int) -> int:
  """Kernel columns one end of the spectrum costs matrix-free."""
  if _lobpcg(kern, which):
    return 3 * k * LOBPCG_ITERATIONS
  return min(max(steps, 2 * k), kern.m)


def _extremes(kern: Kernel, k: int, which: str, path: str, reason: str,
              steps: int, seed: int) -> Estimate:
  """One end of the spectrum of one kernel on the chosen route: ``eigh``
  dense; matrix-free, LOBPCG (:func:`autontk.solvers.eigsh`) or Lanczos
  (see :func:`_lobpcg`), each eigenvalue with its residual bound."""
  if path == "dense":
    lam = kern.eigvalsh()[::-1]
    vals = lam[:k] if which == "largest" else lam[::-1][:k][::-1]
    return Estimate(vals, np.zeros_like(vals), "exact", "eigh", 0, path,
                    reason)
  if not _lobpcg(kern, which):
    vals, bounds = randomized.lanczos_extremes(
        kern.matmat, kern.m, k, which, steps, np.random.default_rng(seed))
    method = "Lanczos"
  else:
    w, u = solvers.eigsh(kern.op, k, which=which, seed=seed)
    vals, u = np.asarray(w, np.float64), np.asarray(u, np.float64)
    bounds = np.linalg.norm(kern.matmat(u) - u * vals, axis=0) / (
        np.linalg.norm(u, axis=0))
    method = "LOBPCG"
  # The residual bound holds for exact products; each product also carries
  # rounding of about eps·√M·‖Θ‖.
  bounds = bounds + kern.eps * np.sqrt(kern.m) * np.abs(vals).max()
  return Estimate(vals, bounds, "bound", method,
                  _columns(kern, k, which, steps), path, reason)


def eigvals(kernel: Any, k: int = 10, *, which: str = "largest",
            steps: int = EIG_STEPS, route: str = "auto",
            memory_budget: float | None = None, seed: int = 0,
            **source: Any) -> Any:
  """The ``k`` largest (or smallest) eigenvalues, in descending order.

  Exact by ``eigh`` on the dense route. Matrix-free, the largest come from
  LOBPCG (:func:`autontk.solvers.eigsh`) on an operator, the smallest (and
  both ends of an array) from Lanczos with full reorthogonalisation; each
  with its residual bound (an eigenvalue lies within it, rounding of the
  products included).

  Args:
    kernel: the kernel (see the module docstring).
    k: how many.
    which: ``"largest"`` or ``"smallest"``.
    steps: Lanczos steps on the matrix-free route (where Lanczos is used).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the Lanczos start vector's seed.
    **source: ``x``, ``params``, ``wrt``, ``groups``, ``trace_axes``,
      ``kwargs`` for a network.

  Returns:
    An :class:`Estimate` with ``value`` of shape ``(k,)`` (or one per
    group).

  >>> import numpy as np
  >>> eigvals(np.diag([3.0, 1.0, 2.0]), 2).value
  array([3., 2.])
  """
  if which not in ("largest", "smallest"):
    raise ValueError(f"which must be 'largest' or 'smallest'; got {which!r}")

  def one(kern: Kernel) -> Estimate:
    q = Question(kern.m ** 3 / 3, _columns(kern, k, which, steps))
    path, reason = choose(q, kern.pricing, route, memory_budget)
    return _extremes(kern, k, which, path, reason, steps, seed)

  return sources.per_group(kernel, source, one)


def condition_number(kernel: Any, *, steps: int = EIG_STEPS,
                     route: str = "auto", memory_budget: float | None = None,
                     seed: int = 0, **source: Any) -> Any:
  """``λ_max / λ_min`` (``inf`` when ``λ_min <= 0``).

  Matrix-free, the bound follows from the two eigenvalues' residual bounds
  (``inf`` when ``λ_min``'s bound reaches zero: Lanczos finds the bottom of
  a fast-decaying spectrum slowly; raise ``steps`` or use the dense route).

  Args:
    kernel: the kernel (see the module docstring).
    steps: Lanczos steps on the matrix-free route (for each end).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the Lanczos start vector's seed.
    **source: the network's ``x``, ``params``... as for :func:`eigvals`.

  Returns:
    An :class:`Estimate` (or one per group).

  >>> import numpy as np
  >>> condition_number(np.diag([4.0, 1.0, 2.0])).value
  4.0
  """

  def one(kern: Kernel) -> Estimate:
    q = Question(kern.m ** 3 / 3, _columns(kern, 1, "largest", steps) +
                 _columns(kern, 1, "smallest", steps))
    path, reason = choose(q, kern.pricing, route, memory_budget)
    top = _extremes(kern, 1, "largest", path, reason, steps, seed)
    bottom = _extremes(kern, 1, "smallest", path, reason, steps, seed)
    hi, lo = float(top.value[0]), float(bottom.value[0])
    value = hi / lo if lo > 0 else np.inf
    if top.exact and bottom.exact:
      return Estimate(value, 0.0, "exact", "eigh", 0, top.route, top.reason)
    e_hi, e_lo = float(top.error[0]), float(bottom.error[0])
    worst = (hi + e_hi) / (lo - e_lo) if lo - e_lo > 0 else np.inf
    best = (hi - e_hi) / (lo + e_lo) if lo > 0 else np.inf
    error = max(worst - value, value - best) if np.isfinite(value) else (
        np.inf)
    return Estimate(value, error, "bound", "Lanczos",
                    top.probes + bottom.probes, top.route, top.reason)

  return sources.per_group(kernel, source, one)


def trace(kernel: Any, *, route: str = "auto", **source: Any) -> Any:
  """The exact trace: of the dense kernel, or ``op.trace()`` (per-example
  kernels) on an operator.

  Args:
    kernel: the kernel (see the module docstring).
    route: ``"auto"`` (the operator's trace unless the kernel is an
      array), ``"dense"`` or ``"matrix-free"``.
    **source: the network's ``x``, ``params``... as for :func:`eigvals`.

  Returns:
    An exact :class:`Estimate` (or one per group; they sum to the total).

  >>> import numpy as np
  >>> trace(np.eye(3)).value
  3.0
  """

  def one(kern: Kernel) -> Estimate:
    dense = route == "dense" or (route == "auto" and (
        kern.pricing.given_dense))
    if dense:
      return Estimate(float(np.trace(kern.dense())), 0.0, "exact",
                      "np.trace", 0, "dense",
                      "forced (route='dense')" if route == "dense" else
                      "given as an array")
    return Estimate(float(kern.op.trace()), 0.0, "exact", "op.trace", 0,
                    "matrix-free", "exact from per-example kernels")

  return sources.per_group(kernel, source, one)
