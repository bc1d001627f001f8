"""NNGP and NTK in one call: ``empirical_kernel_fn`` (neural-tangents'
``empirical_kernel_fn``, for :func:`autontk.predict.gradient_descent_mse_ensemble`
and friends)."""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable

import jax

from autontk._api import nngp_fn, ntk_fn
from autontk._options import Implementation
from autontk._types import ApplyFn, Axes, PyTree, VMapAxes


@functools.lru_cache(maxsize=None)
def _namedtuple(fields: tuple[str, ...]) -> type:
  return collections.namedtuple("EmpiricalKernel", fields)


def empirical_kernel_fn(f: ApplyFn | Any, trace_axes: Axes = (-1,),
                        diagonal_axes: Axes = (), vmap_axes: VMapAxes = None,
                        implementation: Implementation | str | int = "auto",
                        **ntk_options: Any) -> Callable[..., Any]:
  """Returns ``kernel_fn(x1, x2, get, params, **kwargs)`` computing the
  empirical NNGP and/or NTK of ``f``.

  The NTK is :func:`autontk.ntk_fn`'s (so ``"auto"``, plans and the plan
  cache apply), the NNGP :func:`autontk.nngp_fn`'s; both are built once and
  their compiled programs reused across calls.

  Args:
    f: the network ``f(params, x, **kwargs)`` or a model object, as for
      :func:`autontk.ntk_fn`.
    trace_axes: output axes summed over (and divided by their size).
    diagonal_axes: output axes on which only the diagonal is kept.
    vmap_axes: the batch axes of inputs and outputs (NTK only; a
      performance hint).
    implementation: the NTK method, as for :func:`autontk.ntk_fn`.
    **ntk_options: any other option of :func:`autontk.ntk_fn` (``wrt``,
      ``precision``, planner options...); ``precision`` applies to the
      NNGP too.

  Returns:
    ``kernel_fn(x1, x2, get, params, **kwargs)``: ``x2=None`` means ``x1``;
    ``get`` is ``"nngp"``, ``"ntk"`` (an array) or a tuple of them
    (``None``: both), giving a namedtuple ``EmpiricalKernel`` with fields in
    ``get``'s order (for a network with several outputs, a pytree of
    them). ``params`` may be passed by keyword, as
    :func:`autontk.predict.gradient_descent_mse_ensemble` does.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> kernel_fn = autontk.empirical_kernel_fn(f)
  >>> k = kernel_fn(jnp.ones((5, 3)), None, ("nngp", "ntk"), jnp.ones((3, 2)))
  >>> k.nngp.shape, k.ntk.shape
  ((5, 5), (5, 5))
  """
  fns = {
      "nngp": nngp_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                      precision=ntk_options.get("precision")),
      "ntk": ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                    vmap_axes=vmap_axes, implementation=implementation,
                    **ntk_options),
  }

  def kernel_fn(x1: PyTree, x2: PyTree | None, get: Any, params: PyTree,
                **apply_fn_kwargs: Any) -> Any:
    """The ``get`` kernel(s) of ``x1`` and ``x2`` at ``params``."""
    single = isinstance(get, str)
    gets = ("nngp", "ntk") if get is None else (get,) if single else tuple(get)
    gets = tuple(g.lower() for g in gets)
    for g in gets:
      if g not in fns:
        raise ValueError(f'get must hold "nngp" or "ntk", got {g!r}.')
    if len(set(gets)) < len(gets):
      raise ValueError(f'All entries in "get" must be unique. Got {gets}')
    out = [fns[g](x1, x2, params, **apply_fn_kwargs) for g in gets]
    if single:
      return out[0]
    # A pytree of outputs gives a pytree of namedtuples, as in
    # neural-tangents.
    kernels = _namedtuple(gets)
    return jax.tree.map(lambda *ks: kernels(*ks), *out)

  return kernel_fn
