"""Taylor expansions of a network in its parameters: ``linearize`` and
``taylor_expand`` (neural-tangents' calls, on ``jax.jvp``)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk._types import ApplyFn, PyTree


def _sub(p: PyTree, params: PyTree) -> PyTree:
  """The tangent ``p - params``; integer leaves (held constant) get JAX's
  ``float0`` zero tangent."""
  def sub(a, b):
    if jnp.issubdtype(jnp.result_type(b), jnp.inexact):
      return a - b
    return np.zeros(np.shape(b), jax.dtypes.float0)
  return jax.tree.map(sub, p, params)


def _add(out: PyTree, tangent: PyTree) -> PyTree:
  """``out + tangent``, leaving integer outputs (``float0`` tangents)."""
  return jax.tree.map(
      lambda o, t: o if t.dtype == jax.dtypes.float0 else o + t, out, tangent)


def linearize(f: ApplyFn, params: PyTree) -> ApplyFn:
  """The first-order Taylor expansion of ``f`` in its parameters around
  ``params``: ``f_lin(p, x) = f(params, x) + J(x) (p - params)``.

  Args:
    f: the network, ``f(params, *args, **kwargs) -> pytree``.
    params: the parameters to expand around.

  Returns:
    ``f_lin(p, *args, **kwargs)``, called like ``f``.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.sin(p * x)
  >>> f_lin = autontk.linearize(f, 0.)
  >>> float(f_lin(0.5, 2.))
  1.0
  """
  def f_lin(p: PyTree, *args: Any, **kwargs: Any) -> PyTree:
    out, tangent = jax.jvp(lambda q: f(q, *args, **kwargs), (params,),
                           (_sub(p, params),))
    return _add(out, tangent)
  return f_lin


def taylor_expand(f: ApplyFn, params: PyTree, degree: int) -> ApplyFn:
  """The Taylor expansion of ``f`` in its parameters around ``params`` to
  order ``degree``: ``Σ_{k ≤ degree} D^k f(params)[p - params]^k / k!``.

  Args:
    f: the network, ``f(params, *args, **kwargs) -> pytree``.
    params: the parameters to expand around.
    degree: the order of the expansion (0 gives ``f(params, ...)``).

  Returns:
    ``f_tayl(p, *args, **kwargs)``, called like ``f``.

  >>> import jax.numpy as jnp, autontk
  >>> f_2 = autontk.taylor_expand(lambda p, x: jnp.exp(p * x), 0., 2)
  >>> float(f_2(1., 1.))
  2.5
  """
  def expand(g: Callable[[PyTree], PyTree], dp: PyTree, order: int) -> PyTree:
    # Horner form g + (g' + (g'' + ...) / 2) / 1, each derivative the jvp
    # of the previous one along dp.
    if order == degree:
      return g(params)
    d = lambda q: jax.jvp(g, (q,), (dp,))[1]
    rest = expand(d, dp, order + 1)
    return _add(g(params), jax.tree.map(
        lambda v: v if v.dtype == jax.dtypes.float0 else v / (order + 1),
        rest))

  def f_tayl(p: PyTree, *args: Any, **kwargs: Any) -> PyTree:
    return expand(lambda q: f(q, *args, **kwargs), _sub(p, params), 0)
  return f_tayl
