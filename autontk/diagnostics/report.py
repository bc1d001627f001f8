"""Every diagnostic of one network at once: a printable table and a plot.

:func:`report` is what ``autontk diagnose`` prints: the whole kernel's
spectrum, condition number, trace, Frobenius norm, effective ranks, and
(given targets) alignment and (given a second checkpoint) kernel distance,
then the per-group values. Each kernel is formed or wrapped once and shared
by all the diagnostics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autontk.diagnostics import sources
from autontk.diagnostics.estimate import Estimate
from autontk.diagnostics.frobenius import (alignment, effective_rank,
                                           frobenius_norm, kernel_distance)
from autontk.diagnostics.spectrum import condition_number, eigvals, trace


@dataclasses.dataclass(frozen=True)
class Report:
  """The diagnostics of one network.

  Attributes:
    rows: ``(quantity, group, estimate)``; ``group`` is ``None`` for the
      whole kernel.
    spectrum: the top eigenvalues of the whole kernel.
  """

  rows: tuple[tuple[str, str | None, Estimate], ...]
  spectrum: Estimate

  def get(self, quantity: str, group: str | None = None) -> Estimate:
    """The estimate of ``quantity`` for ``group`` (``None``: the whole
    kernel)."""
    for q, g, e in self.rows:
      if q == quantity and g == group:
        return e
    raise KeyError((quantity, group))

  def __str__(self) -> str:
    lines = [f"{'quantity':<25} {'group':<14} {'value':>12} "
             f"{'± error':>12}  route, method"]
    for q, g, e in self.rows:
      err = "exact" if e.exact else f"{float(e.error):.3g}"
      lines.append(f"{q:<25} {g or '(all)':<14} {float(e.value):>12.6g} "
                   f"{err:>12}  {e.route}, {e.method}")
    top = ", ".join(f"{v:.4g}" for v in self.spectrum.value)
    lines.append(f"top eigenvalues: {top} ({self.spectrum.route}, "
                 f"{self.spectrum.method})")
    return "\n".join(lines)

  def plot(self, path: str | None = None) -> Any:
    """The spectrum (log scale, with its error bars) and, where there are
    groups, the per-group kernel distances; saved to ``path`` if given.

    Needs matplotlib (``pip install "autontk[plot]"``).

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt  # optional: the plot extra
    distances = [(g, e) for q, g, e in self.rows
                 if q == "kernel distance" and g is not None]
    fig, axes = plt.subplots(1, 2 if distances else 1, figsize=(
        10 if distances else 5, 3.5), squeeze=False)
    ax = axes[0, 0]
    vals = self.spectrum.value
    ax.errorbar(range(1, len(vals) + 1), vals, yerr=self.spectrum.error,
                fmt="o-", ms=3)
    ax.set(yscale="log", xlabel="i", ylabel="λ_i", title="NTK spectrum")
    if distances:
      ax = axes[0, 1]
      names = [g for g, _ in distances]
      ax.bar(names, [e.value for _, e in distances],
             yerr=[float(e.error) for _, e in distances])
      ax.set(ylabel="1 − cos(Θ_a, Θ_b)", title="kernel distance per group")
      ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    if path is not None:
      fig.savefig(path, dpi=120)
    return fig


def report(f: Any, x: Any, params: Any, *, y: Any = None,
           params_b: Any = None, groups: Any = None, k: int = 10,
           probes: int | None = None, route: str = "auto",
           memory_budget: float | None = None, seed: int = 0,
           **source: Any) -> Report:
  """All diagnostics of the NTK of ``f`` on ``x``, whole and per group.

  Args:
    f: the network (or a model object), as for :func:`autontk.ntk_fn`.
    x: the inputs.
    params: the parameters (checkpoint a).
    y: targets for the alignment (``(N,)`` or ``(N, C)``), or ``None``.
    params_b: a second checkpoint for the kernel distance, or ``None``.
    groups: parameter groups, as for :func:`autontk.ntk_fn`.
    k: how many top eigenvalues.
    probes: the Hutch++ budget of every estimator (default: each one's).
    route: ``"auto"``, ``"dense"`` or ``"matrix-free"``.
    memory_budget: bytes a materialised kernel may take.
    seed: the probes' seed.
    **source: ``wrt``, ``trace_axes``, ``kwargs`` as for the diagnostics.

  Returns:
    A :class:`Report`; ``print`` it, or ``.plot(path)``.

  >>> import jax.numpy as jnp
  >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  >>> p = {"w": jnp.ones((3, 4)) / 2, "v": jnp.ones((4, 2))}
  >>> r = report(f, jnp.arange(15.).reshape(5, 3) / 15, p, k=2)
  >>> r.get("trace").exact
  True
  """
  opts = dict(route=route, memory_budget=memory_budget, seed=seed)
  est = dict(opts, **({} if probes is None else {"probes": probes}))
  spec = dict(x=x, **source)
  whole = sources.kernels(f, params=params, **spec)[None]
  rows = [("condition number", None, condition_number(whole, **opts)),
          ("trace", None, trace(whole, route=route))]
  rows += _frobenius_rows(whole, None, y, est)
  rows.append(("effective rank (entropy)", None,
               effective_rank(whole, kind="entropy", **est)))
  if params_b is not None:
    other = sources.kernels(f, params=params_b, **spec)[None]
    rows.append(("kernel distance", None, kernel_distance(whole, other,
                                                          **est)))
  if groups is not None:
    per = sources.kernels(f, params=params, groups=groups, **spec)
    per_b = (sources.kernels(f, params=params_b, groups=groups, **spec)
             if params_b is not None else {})
    for g, kern in per.items():
      rows.append(("trace", g, trace(kern, route=route)))
      rows += _frobenius_rows(kern, g, y, est)
      if g in per_b:
        rows.append(("kernel distance", g,
                     kernel_distance(kern, per_b[g], **est)))
  return Report(tuple(rows), eigvals(whole, k, **opts))


def _frobenius_rows(kern, group, y, est) -> list:
  rows = [("Frobenius norm", group, frobenius_norm(kern, **est)),
          ("effective rank", group, effective_rank(kern, **est))]
  if y is not None:
    rows.append(("alignment", group, alignment(kern, y, **est)))
  return rows
