"""NNGP and NTK in one call: ``empirical_kernel_fn`` (neural-tangents'
``empirical_kernel_fn``, for :func:`autontk.predict.gradient_descent_mse_ensemble`
and friends).

Asked for both kernels, it shares the network's forward pass where the NTK's
plan allows: when the plan is the Jacobian contraction in one shot (what
``"auto"`` picks for networks whose Jacobians fit), one program traces ``f``
once per input, taking the outputs (the NNGP's features) and the Jacobians
(the NTK's) from the same evaluation (``jax.jacrev``/``jacfwd`` with the
outputs as auxiliary data). Other plans (NTK-vector products, structured
derivatives, chunked) keep their own program and the NNGP its own.
"""

from __future__ import annotations

import collections
import functools
import math
import weakref
from typing import Any, Callable

import jax

from autontk import _axes, _compiled, _problem
from autontk._api import nngp_fn, ntk_fn
from autontk._options import Implementation
from autontk._types import ApplyFn, Axes, PyTree, VMapAxes
from autontk.methods import jacobian_contraction


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
  their compiled programs reused across calls. Asked for both, one program
  computes them from one evaluation of ``f`` per input when the NTK's plan
  is the one-shot Jacobian contraction (see the module docstring).

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
    if len(gets) == 2 and _shares(fns["ntk"], x1, x2, params,
                                  apply_fn_kwargs):
      both = dict(zip(("nngp", "ntk"), shared(x1, x2, params,
                                                **apply_fn_kwargs)))
      out = [both[g] for g in gets]
    else:
      out = [fns[g](x1, x2, params, **apply_fn_kwargs) for g in gets]
    if single:
      return out[0]
    # A pytree of outputs gives a pytree of namedtuples, as in
    # neural-tangents.
    kernels = _namedtuple(gets)
    return jax.tree.map(lambda *ks: kernels(*ks), *out)

  shared = _compiled.CompiledCalls(functools.partial(_both, fns["ntk"]))
  return kernel_fn


def _shares(ntk: Any, x1: PyTree, x2: PyTree | None, params: PyTree,
            kwargs: dict[str, Any]) -> bool:
  """Whether the NTK's plan for this call is the one-shot Jacobian
  contraction of an ungrouped kernel (its Jacobians come with the
  outputs); remembered per call signature."""
  selection = ntk.options.selection
  if selection is not None and selection.groups is not None:
    return False
  leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
  try:
    key = _compiled.call_key(treedef, leaves)
    known = _SHARES.setdefault(ntk, {})
    if key in known:
      return known[key]
  except TypeError:  # an unhashable constant: plan every call
    key = known = None
  plan = ntk.plan(x1, x2, params, **kwargs)
  shares = (plan.implementation is Implementation.JACOBIAN_CONTRACTION and
            plan.chunking is None)
  if known is not None:
    known[key] = shares
  return shares


_SHARES: "weakref.WeakKeyDictionary[Any, dict[Any, bool]]" = (
    weakref.WeakKeyDictionary())
"""Per kernel function and call signature: whether the kernels share."""


def _both(ntk: Any, x1: PyTree, x2: PyTree | None, params: PyTree,
          kwargs: dict[str, Any]) -> tuple[PyTree, PyTree]:
  """``(nngp, ntk)`` from one evaluation of ``f`` per input."""
  with ntk.options.precision_scope():
    problem = _problem.build(ntk.f, ntk.options, x1, x2, params, kwargs)
    o1, j1 = _outputs_and_jacobians(problem, 1)
    o2, j2 = (o1, j1) if problem.same_inputs else _outputs_and_jacobians(
        problem, 2)
    nngp = [_axes.contract_outer(a, b, ax) / ax.trace_size(a.shape)
            for a, b, ax in zip(o1, o2, problem.axes)]
    kernels = jacobian_contraction.contract_jacobians(j1, j2, problem)
  return (jax.tree.unflatten(problem.out_treedef, nngp),
          problem.unflatten_kernels(kernels))


def _outputs_and_jacobians(problem: Any, which: int) -> tuple[list, list]:
  """The output leaves of ``f`` on input ``which`` and their Jacobians
  (per output leaf, per parameter leaf), from one trace of ``f``: reverse
  mode when the outputs are fewer than the parameters, else forward."""
  fn = problem.fn(which)

  def with_outputs(theta):
    out = fn(theta)
    return out, out

  outs = problem.out1 if which == 1 else problem.out2
  n_out = sum(math.prod(o.shape) for o in outs)
  jac = jax.jacfwd if problem.n_params < n_out else jax.jacrev
  j, out = jac(with_outputs, has_aux=True)(problem.theta)
  return out, j
