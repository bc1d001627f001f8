"""Independent reference NTK: naive full Jacobian of the flattened parameters.

Deliberately shares no code with autontk: parameters are flattened with
``ravel_pytree``, the Jacobian is taken with ``jax.jacrev`` in float64 where
available, and traces/diagonals are taken by NumPy's einsum with repeated
indices (which NumPy reads as diagonals).
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def _is_float_leaf(v):
  """Floating-point arrays and Python floats are differentiated; anything
  else (integer arrays, Python ints, bools, strings, functions) is held
  constant."""
  if not isinstance(v, (float, jax.Array, np.ndarray, np.generic)):
    return False
  dtype = v.dtype if hasattr(v, "dtype") else np.result_type(v)
  return bool(jnp.issubdtype(dtype, jnp.floating))


def _split_float(params):
  leaves, td = jax.tree.flatten(params)
  is_f = [_is_float_leaf(l) for l in leaves]
  floats = [l for l, b in zip(leaves, is_f) if b]

  def rebuild(fl):
    it = iter(fl)
    return jax.tree.unflatten(td, [next(it) if b else l
                                   for l, b in zip(leaves, is_f)])

  return floats, rebuild


def _canon(axes, ndim):
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return sorted({a % ndim for a in axes})


def jacobian_leaves(f, params, x, **kwargs):
  """Per output leaf, ``∂out/∂θ`` of shape ``out.shape + (P,)``, eagerly."""
  return jacobians(f, params, x, kwargs)


def jacobians(f, params, x, kwargs, jit=False):
  """:func:`jacobian_leaves` with the kwargs as a dict; ``jit`` compiles the
  Jacobian (faster for big models, same values)."""
  floats, rebuild = _split_float(params)
  flat, unravel = ravel_pytree(floats)

  def g(v):
    return jax.tree.leaves(f(rebuild(unravel(v)), x, **kwargs))

  wrap = jax.jit if jit else (lambda h: h)
  try:
    jac = wrap(jax.jacrev(g))(flat)
  except (TypeError, ValueError):  # e.g. while loops have no reverse mode
    jac = wrap(jax.jacfwd(g))(flat)
  return [np.asarray(j, dtype=np.float64) for j in jac]


def contract(j1, j2, trace_axes, diagonal_axes):
  """Kernel of one output leaf from full Jacobians of shape out + (P,)."""
  d = j1.ndim - 1
  full = np.tensordot(j1, j2, axes=([-1], [-1]))
  trace = _canon(trace_axes, d)
  diag = _canon(diagonal_axes, d)
  lo, hi = string.ascii_lowercase, string.ascii_uppercase
  s1 = lo[:d]
  s2 = "".join(lo[i] if (i in trace or i in diag) else hi[i]
               for i in range(d))
  out = ""
  for i in range(d):
    if i in trace:
      continue
    out += lo[i] if i in diag else lo[i] + hi[i]
  size = int(np.prod([j1.shape[i] for i in trace])) if trace else 1
  return np.einsum(f"{s1}{s2}->{out}", full) / size


def reference_ntk(f, params, x1, x2, trace_axes=(-1,), diagonal_axes=(),
                  kwargs1=None, kwargs2=None):
  """The NTK as a pytree of NumPy float64 arrays (kwargs already split)."""
  kwargs1 = kwargs1 or {}
  kwargs2 = kwargs1 if kwargs2 is None else kwargs2
  out_td = jax.tree.structure(f(params, x1, **kwargs1))
  j1 = jacobian_leaves(f, params, x1, **kwargs1)
  j2 = j1 if x2 is None else jacobian_leaves(f, params, x2, **kwargs2)
  return jax.tree.unflatten(
      out_td, [contract(a, b, trace_axes, diagonal_axes) for a, b in zip(j1, j2)])


def reference_nngp(f, params, x1, x2, trace_axes=(-1,), diagonal_axes=(),
                   kwargs1=None, kwargs2=None):
  kwargs1 = kwargs1 or {}
  kwargs2 = kwargs1 if kwargs2 is None else kwargs2
  o1 = jax.tree.leaves(f(params, x1, **kwargs1))
  o2 = o1 if x2 is None else jax.tree.leaves(f(params, x2, **kwargs2))
  td = jax.tree.structure(f(params, x1, **kwargs1))
  return jax.tree.unflatten(td, [
      contract(np.asarray(a, np.float64)[..., None],
               np.asarray(b, np.float64)[..., None], trace_axes,
               diagonal_axes) for a, b in zip(o1, o2)])
