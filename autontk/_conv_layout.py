"""Convolutions in the layout of XLA's fast CPU kernels, inside loops too.

XLA's CPU backend runs a convolution on its fast (Eigen) kernels only when
its dimension numbers are canonical: input ``(batch, spatial..., feature)``,
kernel ``(spatial..., in, out)``, output ``(batch, spatial..., feature)``.
Its pass that rewrites other convolutions into that form (with transposes
around them) looks at the top-level computation only, so a convolution in
the body of a ``while`` loop keeps its layout and falls back to a naive
loop nest. The transposed convolutions that differentiation emits (a
kernel's gradient contracts the batch and the spatial axes: batch and
feature change roles) are never canonical, and NTK-vector products run them
inside loops: over batches of examples and over the iterations of a solver.
On a small CNN a kernel-gradient convolution in a ``scan`` ran 60× slower
than the same convolution at top level.

:func:`canonical_convolutions` does the rewrite at the JAX level before XLA
sees the program: each non-canonical convolution becomes transposes of its
operands, a canonical convolution, and a transpose of its result, at any
depth. The values are the same; this is CPU-backend tuning (other backends
choose their own layouts), so callers apply it on CPU only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from autontk import _compat

_CONV = jax.lax.conv_general_dilated_p


def canonical_convolutions(fun: Callable[..., Any]) -> Callable[..., Any]:
  """``fun`` with every convolution in the canonical CPU layout.

  >>> import jax.numpy as jnp
  >>> g = canonical_convolutions(lambda a: a * 2)
  >>> float(g(jnp.ones(())))
  2.0
  """
  return _compat.rewrite_equations(fun, _canonical_rule)


def _canonical_rule(eqn: Any) -> Callable[..., list[Any]] | None:
  if eqn.primitive is not _CONV:
    return None
  dn = eqn.params["dimension_numbers"]
  n = len(dn.lhs_spec) - 2
  if n < 1 or (tuple(dn.lhs_spec), tuple(dn.rhs_spec),
               tuple(dn.out_spec)) == _canonical(n):
    return None
  return lambda lhs, rhs: [_canonical_conv(lhs, rhs, eqn.params)]


def _canonical(n: int) -> tuple[tuple[int, ...], ...]:
  """``(lhs_spec, rhs_spec, out_spec)`` of the NHWC / HWIO / NHWC layout
  with ``n`` spatial axes."""
  spatial = tuple(range(1, n + 1))
  return ((0, n + 1) + spatial, (n + 1, n) + tuple(range(n)),
          (0, n + 1) + spatial)


def _canonical_conv(lhs, rhs, params: dict[str, Any]):
  """The convolution of ``params`` (any dimension numbers) computed as a
  canonical one between transposes."""
  dn = params["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  lhs = jax.lax.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
  rhs = jax.lax.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))
  n = len(lhs_spec) - 2
  canonical = jax.lax.ConvDimensionNumbers(*_canonical(n))
  out = _CONV.bind(lhs, rhs, **{**params, "dimension_numbers": canonical})
  # Canonical output axes: batch 0, spatial 1..n, feature n + 1.
  source = {out_spec[0]: 0, out_spec[1]: n + 1}
  source.update({out_spec[2 + i]: 1 + i for i in range(n)})
  return jax.lax.transpose(out, tuple(source[j] for j in range(n + 2)))
