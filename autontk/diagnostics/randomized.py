"""Matrix-free estimators on a symmetric PSD matrix seen only through ``A V``.

Everything here takes ``matmat``: a function from ``V`` of shape ``(M, R)``
(float64) to ``A V`` of the same shape, and works in float64 on the host.

* :func:`hutchpp_gram`: Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021)
  for ``tr(A_i A_j)`` over several matrices with shared probes: a sketch
  ``Q`` of the dominant range is counted exactly, the rest by Hutchinson on
  ``(I - QQᵀ) G``; the per-probe terms give the standard error.
* :func:`hutchpp_spectral_sum`: ``tr f(A)`` by the same split, each
  quadratic form ``vᵀ f(A) v`` by Lanczos quadrature (stochastic Lanczos
  quadrature, Ubaru, Chen & Saad 2017).
* :func:`lanczos_extremes`: extreme eigenvalues by Lanczos with full
  reorthogonalisation, each with its residual bound.

The Lanczos runs are :mod:`autontk.solvers.lanczos`'s, in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from autontk.solvers import lanczos

Matmat = Callable[[np.ndarray], np.ndarray]
"""``V (M, R) -> A V (M, R)``, float64."""


def rademacher(rng: np.random.Generator, m: int, r: int) -> np.ndarray:
  """``(m, r)`` random signs (float64)."""
  return rng.choice(np.array([-1.0, 1.0]), size=(m, r))


def split_probes(probes: int, m: int) -> tuple[int, int]:
  """``(sketch, residual)`` columns of a Hutch++ budget of ``probes``: half
  each (at least 2 residual probes for a standard error), the sketch no
  wider than ``m``."""
  if probes < 3:
    raise ValueError(f"Hutch++ needs at least 3 probes; got {probes}.")
  sketch = min(probes // 2, m)
  return sketch, probes - sketch


@dataclasses.dataclass(frozen=True)
class ProbeSums:
  """Hutch++ pieces of ``tr(A_i A_j)`` for matrices ``A_0 .. A_{n-1}``.

  Attributes:
    exact: ``(n, n)``: ``tr(Qᵀ A_i A_j Q)``, the sketched part.
    cross: ``(g, g, n, n)``: ``(A_i g'_k)ᵀ (A_j g'_l)`` over pairs of
      residual probes; its diagonal ``k = l`` holds the probes' terms.
  """

  exact: np.ndarray
  cross: np.ndarray

  @property
  def terms(self) -> np.ndarray:
    """``(g, n, n)``: per residual probe ``g'ᵀ A_i A_j g'``."""
    g = self.cross.shape[0]
    return self.cross[np.arange(g), np.arange(g)]

  @property
  def mean(self) -> np.ndarray:
    """``(n, n)``: the estimate of ``tr(A_i A_j)``."""
    return self.exact + self.terms.mean(axis=0)

  def stderr_of(self, fn: Callable[[np.ndarray], float],
                rounding: float = 0.0) -> tuple[float, float]:
    """``fn(mean)`` and its standard error, by the delta method.

    ``rounding``, the relative error of each Gram entry from the rounding
    of the products, is added in quadrature (it does not average out).

    The linearised estimate is a quadratic form ``g'ᵀ R g'`` per probe.
    Its variance is at most ``2‖R‖²_F`` (Rademacher probes), and
    ``‖R‖²_F`` is the mean of ``(g'_kᵀ R g'_l)²`` over the ``g(g-1)/2``
    pairs of probes: a steadier estimate than the probes' own spread,
    whose few samples understate the heavy tails of a steep residual
    spectrum. The larger of the two is reported.
    """
    value = fn(self.mean)
    g = self.cross.shape[0]
    grad = self._gradient(fn, value)
    per_pair = np.einsum("klij,ij->kl", self.cross, grad)
    per_pair = (per_pair + per_pair.T) / 2
    off = per_pair[~np.eye(g, dtype=bool)]
    pairs = 2 * np.mean(off ** 2) if off.size else 0.0
    sample = np.var(np.diag(per_pair), ddof=1)
    floor = rounding * np.sum(np.abs(grad * self.mean))
    return value, float(np.sqrt(max(pairs, sample) / g + floor ** 2))

  def _gradient(self, fn, value) -> np.ndarray:
    eps = 1e-6 * max(np.abs(self.mean).max(), 1e-300)
    grad = np.zeros_like(self.mean)
    for idx in np.ndindex(*self.mean.shape):
      bumped = self.mean.copy()
      bumped[idx] += eps
      grad[idx] = (fn(bumped) - value) / eps
    return grad


def _orth(y: np.ndarray) -> np.ndarray:
  q, r = np.linalg.qr(y)
  keep = np.abs(np.diag(r)) > 1e-12 * max(np.abs(np.diag(r)).max(), 1e-300)
  return q[:, keep]


def hutchpp_gram(matmats: list[Matmat], m: int, probes: int,
                 rng: np.random.Generator,
                 scales: list[float] | None = None) -> ProbeSums:
  """Hutch++ for ``tr(A_i A_j)`` (Frobenius products) with shared probes.

  The sketch spans ``Σ A_i / c_i``; for two matrices half of it spans the
  difference ``A_0 / c_0 - A_1 / c_1`` instead, so a distance between
  close matrices is counted mostly exactly rather than by the probes.

  Args:
    matmats: the products of ``n`` symmetric ``(m, m)`` matrices.
    m: their size.
    probes: Hutch++ budget: sketch columns plus residual probes (see
      :func:`split_probes`); the cost is ``2·sketch + residual`` columns
      through each matrix.
    rng: the random generator.
    scales: ``c_i``, a scale of each matrix (e.g. its trace; default 1).

  Returns:
    :class:`ProbeSums`.
  """
  sketch, residual = split_probes(probes, m)
  scales = scales or [1.0] * len(matmats)
  s = rademacher(rng, m, sketch)
  ys = [mm(s) / c for mm, c in zip(matmats, scales)]
  y = sum(ys)
  if len(ys) == 2:
    half = sketch // 2
    y = np.concatenate([y[:, half:], (ys[0] - ys[1])[:, :half]], axis=1)
  q = _orth(y)
  g = rademacher(rng, m, residual)
  g = g - q @ (q.T @ g)
  k = q.shape[1]
  outs = [mm(np.concatenate([q, g], axis=1)) for mm in matmats]
  aq = np.stack([o[:, :k] for o in outs])      # (n, m, k)
  ag = np.stack([o[:, k:] for o in outs])      # (n, m, residual)
  exact = np.einsum("imk,jmk->ij", aq, aq)
  cross = np.einsum("imk,jml->klij", ag, ag)
  return ProbeSums(exact, cross)


def hutchpp_spectral_sum(matmat: Matmat, m: int, fn: Callable, probes: int,
                         steps: int, rng: np.random.Generator,
                         trace: float | None = None) -> tuple[float, float]:
  """``tr f(A)`` by Hutch++ with Lanczos quadrature for each quadratic form.

  Given the exact ``tr(A)``, the residual probes' forms ``g'ᵀ A g'`` (the
  first Lanczos coefficient, free) serve as a control variate: the residual
  part is ``mean(g'ᵀ f(A) g' - c·g'ᵀ A g') + c·(tr(A) - tr(QᵀAQ))`` with
  ``c`` fitted to the probes by least squares. It removes the part of
  ``f`` that is linear over the residual spectrum, most of the probes'
  noise for ``f(λ) = λ log λ`` on a kernel's tail (the spread of the
  probes comes from the few largest residual eigenvalues, over which ``f``
  is close to linear).

  Args:
    matmat: the product of a symmetric ``(m, m)`` matrix.
    m: its size.
    fn: ``f``, applied to arrays of eigenvalues.
    probes: Hutch++ budget (:func:`split_probes`).
    steps: Lanczos steps per probe (at most ``m``).
    rng: the random generator.
    trace: the exact ``tr(A)``, or ``None`` (no control variate).

  Returns:
    ``(estimate, stderr)``; the cost is ``sketch + steps·probes`` columns.
  """
  sketch, residual = split_probes(probes, m)
  q = _orth(matmat(rademacher(rng, m, sketch)))
  g = rademacher(rng, m, residual)
  g = g - q @ (q.T @ g)
  starts = np.concatenate([q, g], axis=1)
  norms = np.linalg.norm(starts, axis=0)
  alpha, beta = lanczos.tridiagonalize(_device(matmat), starts,
                                       min(steps, m))
  forms = lanczos.quadrature(alpha, beta, norms, fn)
  k = q.shape[1]
  terms, rest = forms[k:], 0.0
  if trace is not None:
    linear = norms[k:] ** 2 * alpha[k:, 0]  # g'ᵀ A g'
    c = _slope(linear, terms)
    terms = terms - c * linear
    rest = c * (trace - np.sum(norms[:k] ** 2 * alpha[:k, 0]))
  fitted = 0 if trace is None else 1
  spread = np.std(terms, ddof=1 + fitted) if residual > 1 + fitted else (
      np.inf)
  return (float(forms[:k].sum() + terms.mean() + rest),
          float(spread / np.sqrt(residual)))


def _slope(x: np.ndarray, y: np.ndarray) -> float:
  """The least-squares slope of ``y`` on ``x`` (0 if ``x`` is constant)."""
  dx = x - x.mean()
  var = float(np.sum(dx * dx))
  scale = max(float(np.sum(x * x)), 1e-300)
  return float(np.sum(dx * (y - y.mean())) / var) if var > 1e-24 * scale else (
      0.0)


def lanczos_extremes(matmat: Matmat, m: int, k: int, which: str, steps: int,
                     rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` largest or smallest eigenvalues by Lanczos.

  Args:
    matmat: the product of a symmetric ``(m, m)`` matrix.
    m: its size.
    k: how many.
    which: ``"largest"`` or ``"smallest"``.
    steps: Krylov steps (raised to ``2k``, capped at ``m``).
    rng: the random generator (the start vector).

  Returns:
    ``(values, bounds)``, descending: each bound is the residual norm
    ``‖A y - θ y‖`` of the Ritz pair, so an eigenvalue of ``A`` lies within
    it of ``θ``.
  """
  steps = min(max(steps, 2 * k), m)
  v0 = rng.standard_normal((m, 1))
  alpha, beta = lanczos.tridiagonalize(_device(matmat), v0, steps)
  dead = np.flatnonzero(beta[0] == 0.0)
  n = dead[0] + 1 if dead.size else steps  # an exhausted Krylov space
  theta, u = lanczos.ritz(alpha[0, :n], beta[0, :n])
  bounds = np.abs(beta[0, n - 1] * u[-1])
  k = min(k, n)
  pick = slice(n - k, None) if which == "largest" else slice(0, k)
  values, bounds = theta[pick], bounds[pick]
  order = np.argsort(values)[::-1]
  return values[order], bounds[order]


def _device(matmat: Matmat) -> Callable:
  """``matmat`` for :func:`autontk.solvers.lanczos.tridiagonalize`, which
  passes its float64 basis vectors as JAX arrays."""
  return lambda v: matmat(np.asarray(v))
