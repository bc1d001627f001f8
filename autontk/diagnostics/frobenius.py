"""Frobenius quantities: the norm, effective ranks, centered kernel-target
alignment and the kernel distance between checkpoints.

Dense, each is exact. Matrix-free, ``‖Θ‖²_F = tr(Θ²)`` and
``⟨Θ_a, Θ_b⟩ = tr(Θ_a Θ_b)`` come from Hutch++ with shared probes
(:func:`~autontk.diagnostics.randomized.hutchpp_gram`), the entropy of the
spectrum from Hutch++ with Lanczos quadrature (the exact trace as a
control variate); a ratio's standard error follows by the delta method over
the probes. The keywords shared by every diagnostic are described in
:mod:`autontk.diagnostics.spectrum`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autontk.diagnostics import randomized, sources
from autontk.diagnostics.estimate import Estimate
from autontk.diagnostics.sources import Kernel
from autontk.route import Question, choose

PROBES = 40
"""Default Hutch++ budget: 20 sketch columns and 20 residual probes."""

ALIGNMENT_PROBES = 60
"""Default Hutch++ budget of :func:`alignment`: the centered kernel lacks
the dominant constant mode, so its spectrum is flatter than the kernel's; a
20-column sketch can leave a few large directions in the remainder, whose
skewed probe terms make the standard error too small (92 % coverage on a
CNN's NTK at 40 probes, all of 60 seeds covered at 60)."""

DISTANCE_PROBES = 80
"""Default Hutch++ budget of :func:`kernel_distance`: a small distance is a
small difference of two close kernels, and its relative error depends on
how many directions the change spans; the 40-column sketch of this budget
captures them on the NTKs measured (``bench/diagnostics_accuracy``)."""

STEPS = 40
"""Default Lanczos steps per probe (stochastic Lanczos quadrature)."""

EFFECTIVE_RANKS = ("ratio", "entropy")


def _hutchpp_columns(probes: int, m: int) -> int:
  sketch, residual = randomized.split_probes(probes, m)
  return 2 * sketch + residual


def _gram_estimate(kerns: list[Kernel], fn, probes: int, seed: int,
                   reason: str, matmats=None) -> Estimate:
  """``fn`` of the Hutch++ Gram matrix ``tr(Θ_i Θ_j)`` of ``kerns``."""
  matmats = matmats or [k.matmat for k in kerns]
  scales = [k.trace() for k in kerns] if len(kerns) > 1 else None
  sums = randomized.hutchpp_gram(matmats, kerns[0].m, probes,
                                 np.random.default_rng(seed), scales)
  value, stderr = sums.stderr_of(fn, _rounding(kerns[0]))
  return Estimate(value, stderr, "stderr", "Hutch++", probes, "matrix-free",
                  reason)


def _rounding(kern: Kernel) -> float:
  """Relative rounding of an inner product of two products ``Θ v``."""
  return kern.eps * np.sqrt(kern.m)


def frobenius_norm(kernel: Any, *, probes: int = PROBES, route: str = "auto",
                   memory_budget: float | None = None, seed: int = 0,
                   **source: Any) -> Any:
  """``‖Θ‖_F``: exact dense, by Hutch++ on ``tr(Θ²)`` matrix-free.

  Args:
    kernel: the kernel (see :mod:`autontk.diagnostics.spectrum`).
    probes: the Hutch++ budget (half sketch, half residual probes).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the probes' seed.
    **source: the network's ``x``, ``params``, ``wrt``, ``groups``...

  Returns:
    An :class:`Estimate` (or one per group).

  >>> import numpy as np
  >>> frobenius_norm(np.eye(4)).value
  2.0
  """

  def one(kern: Kernel) -> Estimate:
    q = Question(kern.m ** 2, _hutchpp_columns(probes, kern.m))
    path, reason = choose(q, kern.pricing, route, memory_budget)
    if path == "dense":
      return Estimate(float(np.linalg.norm(kern.dense())), 0.0, "exact",
                      "Frobenius sums", 0, path, reason)
    return _gram_estimate([kern], lambda g: np.sqrt(g[0, 0]), probes, seed,
                          reason)

  return sources.per_group(kernel, source, one)


def effective_rank(kernel: Any, *, kind: str = "ratio", probes: int = PROBES,
                   steps: int = STEPS, route: str = "auto",
                   memory_budget: float | None = None, seed: int = 0,
                   **source: Any) -> Any:
  """The effective rank: ``tr(Θ)² / ‖Θ‖²_F`` or ``exp(H(λ / Σλ))``.

  ``kind="ratio"``: the trace is exact, ``‖Θ‖²_F`` by Hutch++.
  ``kind="entropy"``: the exponential of the Shannon entropy of the
  normalised spectrum, ``H = -tr(P log P)`` with ``P = Θ / tr Θ``;
  matrix-free, a spectral sum estimated by Hutch++ with Lanczos quadrature
  of ``steps`` steps per probe and the exact trace as a control variate
  (:func:`~autontk.diagnostics.randomized.hutchpp_spectral_sum`; negative
  eigenvalues of rounding count as zero).

  Args:
    kernel: the kernel (see :mod:`autontk.diagnostics.spectrum`).
    kind: ``"ratio"`` or ``"entropy"``.
    probes: the Hutch++ budget.
    steps: Lanczos steps per probe (``"entropy"``).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the probes' seed.
    **source: the network's ``x``, ``params``, ``wrt``, ``groups``...

  Returns:
    An :class:`Estimate` (or one per group).

  >>> import numpy as np
  >>> effective_rank(np.diag([1.0, 1.0, 0.0])).value
  2.0
  """
  if kind not in EFFECTIVE_RANKS:
    raise ValueError(f"kind must be one of {EFFECTIVE_RANKS}; got {kind!r}.")

  def one(kern: Kernel) -> Estimate:
    if kind == "ratio":
      q = Question(kern.m ** 2, _hutchpp_columns(probes, kern.m))
    else:
      sketch, _ = randomized.split_probes(probes, kern.m)
      q = Question(kern.m ** 3 / 3, sketch + min(steps, kern.m) * probes)
    path, reason = choose(q, kern.pricing, route, memory_budget)
    if path == "dense":
      return _dense_rank(kern, kind, reason)
    tr = kern.trace()
    if kind == "ratio":
      return _gram_estimate([kern], lambda g: tr ** 2 / g[0, 0], probes,
                            seed, reason)
    # The normalised spectrum p = λ / tr Θ: H = -tr(P log P), so the
    # estimate's scale is the entropy's whatever the kernel's.
    s, se = randomized.hutchpp_spectral_sum(
        lambda v: kern.matmat(v) / tr, kern.m, _xlogx, probes, steps,
        np.random.default_rng(seed), trace=1.0)
    value = float(np.exp(-s))
    se = np.hypot(se, _rounding(kern) * abs(s))
    return Estimate(value, value * se, "stderr",
                    "Hutch++ + Lanczos quadrature", probes, path, reason)

  return sources.per_group(kernel, source, one)


def _xlogx(lam: np.ndarray) -> np.ndarray:
  pos = np.maximum(lam, 0.0)
  return np.where(pos > 0, pos * np.log(np.where(pos > 0, pos, 1.0)), 0.0)


def _dense_rank(kern: Kernel, kind: str, reason: str) -> Estimate:
  if kind == "ratio":
    k = kern.dense()
    return Estimate(float(np.trace(k) ** 2 / np.sum(k * k)), 0.0, "exact",
                    "Frobenius sums", 0, "dense", reason)
  lam = np.maximum(kern.eigvalsh(), 0.0)
  p = lam[lam > 0] / lam.sum()
  return Estimate(float(np.exp(-np.sum(p * np.log(p)))), 0.0, "exact",
                  "eigh", 0, "dense", reason)


def alignment(kernel: Any, y: Any, *, probes: int = ALIGNMENT_PROBES,
              route: str = "auto", memory_budget: float | None = None,
              seed: int = 0, **source: Any) -> Any:
  """Centered kernel-target alignment with targets ``y``.

  ``A = ⟨HΘH, H yyᵀ H⟩_F / (‖HΘH‖_F ‖H yyᵀ H‖_F)``, ``H = I - 11ᵀ/M``.
  Matrix-free the numerator ``tr(yᵀ H Θ H y)`` and ``‖H yyᵀ H‖_F =
  ‖(Hy)ᵀ Hy‖_F`` are exact, ``‖HΘH‖_F`` is Hutch++'s.

  Args:
    kernel: the kernel (see :mod:`autontk.diagnostics.spectrum`).
    y: targets of shape ``(M,)`` or ``(M, C)`` (one-hot labels or
      regression targets); for an untraced ``(N·O, N·O)`` kernel, ``(N, O)``
      targets are read as ``(N·O,)``.
    probes: the Hutch++ budget (default :data:`ALIGNMENT_PROBES`).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the probes' seed.
    **source: the network's ``x``, ``params``, ``wrt``, ``groups``...

  Returns:
    An :class:`Estimate` in ``[-1, 1]`` (or one per group).

  >>> import numpy as np
  >>> y = np.array([1.0, -1.0, 1.0, -1.0])
  >>> round(alignment(np.outer(y, y), y).value, 6)
  1.0
  """

  def one(kern: Kernel) -> Estimate:
    yc = _centered_targets(y, kern.m)
    c = yc.shape[1]
    q = Question(kern.m ** 2 * (c + 1), c + _hutchpp_columns(probes, kern.m))
    path, reason = choose(q, kern.pricing, route, memory_budget)
    target = float(np.linalg.norm(yc.T @ yc))
    if target == 0.0:
      raise ValueError("`y` is constant over the examples: centered, it is "
                       "zero and the alignment is undefined.")
    if path == "dense":
      k = kern.dense()
      kc = k - k.mean(0) - k.mean(1)[:, None] + k.mean()
      value = float(np.sum(yc * (kc @ yc)) / (np.linalg.norm(kc) * target))
      return Estimate(value, 0.0, "exact", "Frobenius sums", 0, path,
                      reason)
    num = float(np.sum(yc * kern.matmat(yc)))
    centered = lambda v: _center(kern.matmat(_center(v)))
    return _gram_estimate([kern], lambda g: num / (np.sqrt(g[0, 0]) * target),
                          probes, seed, reason, matmats=[centered])

  return sources.per_group(kernel, source, one)


def _center(v: np.ndarray) -> np.ndarray:
  return v - v.mean(axis=0)


def _centered_targets(y: Any, m: int) -> np.ndarray:
  y = np.asarray(y, np.float64)
  if y.ndim and y.shape[0] == m:
    return _center(y.reshape(m, -1))
  if y.size == m:
    return _center(y.reshape(m, 1))
  raise ValueError(f"targets of shape {y.shape} do not match a kernel of "
                   f"size {m}.")


def kernel_distance(kernel: Any, kernel_b: Any = None, *, params_b: Any = None,
                    probes: int = DISTANCE_PROBES, route: str = "auto",
                    memory_budget: float | None = None, seed: int = 0,
                    **source: Any) -> Any:
  """``1 - ⟨Θ_a, Θ_b⟩_F / (‖Θ_a‖_F ‖Θ_b‖_F)`` between two kernels.

  Two arrays or operators (or dicts of them per group), or one network with
  ``params=`` (checkpoint a) and ``params_b=`` (checkpoint b). Matrix-free
  the three Frobenius products share their Hutch++ probes, so the distance's
  standard error is small even where the kernels are close.

  Args:
    kernel: kernel a, or the network.
    kernel_b: kernel b (``None`` for a network).
    params_b: the network's second parameters.
    probes: the Hutch++ budget (default :data:`DISTANCE_PROBES`).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the probes' seed.
    **source: the network's ``x``, ``params``, ``wrt``, ``groups``...

  Returns:
    An :class:`Estimate` in ``[0, 2]`` (or one per group).

  >>> import numpy as np
  >>> kernel_distance(np.eye(3), 2 * np.eye(3)).value
  0.0
  """
  pairs = _pairs(kernel, kernel_b, params_b, source)

  def one(pair: tuple[Kernel, Kernel]) -> Estimate:
    a, b = pair
    q = Question(2 * a.m ** 2, 2 * _hutchpp_columns(probes, a.m), kernels=2)
    path, reason = choose(q, a.pricing, route, memory_budget)
    if path == "dense":
      ka, kb = a.dense(), b.dense()
      cos = np.sum(ka * kb) / (np.linalg.norm(ka) * np.linalg.norm(kb))
      return Estimate(float(max(1 - cos, 0.0)), 0.0, "exact",
                      "Frobenius sums", 0, path, reason)
    return _gram_estimate(
        [a, b], lambda g: 1 - g[0, 1] / np.sqrt(g[0, 0] * g[1, 1]), probes,
        seed, reason)

  out = {g: one(p) for g, p in pairs.items()}
  return out[None] if list(out) == [None] else out


def _pairs(kernel, kernel_b, params_b, source) -> dict:
  if (kernel_b is None) == (params_b is None):
    raise ValueError("give either kernel_b (a second kernel) or params_b "
                     "(a network's second parameters).")
  if kernel_b is not None:
    a = sources.kernels(kernel, **source)
    b = sources.kernels(kernel_b, **source)
  else:
    a = sources.kernels(kernel, **source)
    b = sources.kernels(kernel, **{**source, "params": params_b})
  if set(a) != set(b):
    raise ValueError(f"the two kernels have different groups: {sorted(a)} "
                     f"and {sorted(b)}.")
  if any(a[g].m != b[g].m for g in a):
    raise ValueError("the two kernels have different sizes.")
  return {g: (a[g], b[g]) for g in a}
