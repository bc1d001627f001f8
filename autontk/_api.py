"""Public entry points: ``ntk_fn``, ``nngp_fn`` and ``ntk_vp_fn``.

The top of the library: ``ntk_fn`` builds an :class:`~autontk.NtkFn` and
hands it the planner behind ``implementation="auto"``
(:mod:`autontk.auto`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _axes, _compiled, _problem
from autontk._ntk_fn import NtkFn
from autontk._options import Implementation, NtkOptions
from autontk._types import ApplyFn, Axes, PyTree, VMapAxes
from autontk.auto.cached import default_planner, make_planner


def ntk_fn(f: ApplyFn, *, trace_axes: Axes = (-1,), diagonal_axes: Axes = (),
           vmap_axes: VMapAxes = None,
           implementation: Implementation | str | int = "auto",
           jit: bool = True, **auto_options: Any) -> NtkFn:
  """Returns a function computing the empirical NTK ``J(x1) J(x2)ᵀ`` of ``f``.

  A drop-in for neural-tangents' ``empirical_ntk_fn``: same call, same result
  shapes, same values.

  Args:
    f: the network, ``f(params, x, **kwargs) -> array or pytree of arrays``.
    trace_axes: output axes summed over (and divided by their total size);
      e.g. ``(-1,)`` for the logits axis. Negative values count from the end
      of each output leaf.
    diagonal_axes: output axes on which only the diagonal of the kernel is
      kept (they appear once in the result). ``(0,)`` gives per-example
      kernels ``Θ(x_i, x_i)``.
    vmap_axes: performance hint: the batch axis of inputs and outputs, as an
      int, a pytree, or neural-tangents' ``(in_axes, out_axes, kwargs_axes)``
      triple. Only give it when examples do not interact (no BatchNorm in
      training mode); it never changes the values.
    implementation: ``"auto"`` (planner's choice), ``"jacobian_contraction"``,
      ``"ntk_vector_products"``, ``"structured_derivatives"``, an
      :class:`Implementation`, or neural-tangents' integers 0-3.
    jit: compile each plan with ``jax.jit`` (cached per static arguments).
    **auto_options: options of the ``"auto"`` planner, e.g.
      ``memory_budget=0.25`` (see :class:`autontk.PlannerOptions` and
      ``docs/cost_report.md``); ``tune=True`` (or a
      :class:`autontk.TuneOptions`) times the best candidates on the
      device on first use; ``plan_cache=autontk.PlanCache(dir)`` or
      ``False`` chooses the persistent plan cache (``docs/cli.md``).

  Returns:
    An :class:`NtkFn` ``ntk(x1, x2, params, **kwargs)``.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  >>> p = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
  >>> autontk.ntk_fn(f)(jnp.ones((5, 3)), None, p).shape
  (5, 5)
  """
  options = NtkOptions.make(trace_axes, diagonal_axes, vmap_axes,
                            implementation)
  planner = make_planner(**auto_options) if auto_options else (
      default_planner())
  return NtkFn(f, options, jit=jit, planner=planner)


def nngp_fn(f: ApplyFn, *, trace_axes: Axes = (-1,),
            diagonal_axes: Axes = ()) -> Callable[..., PyTree]:
  """Returns the empirical NNGP kernel function ``f(x1) f(x2)ᵀ``.

  Same axes semantics and kwargs splitting as :func:`ntk_fn` (and as
  neural-tangents' ``empirical_nngp_fn``).

  Args:
    f: the network, ``f(params, x, **kwargs)``.
    trace_axes: output axes summed over and divided by their size.
    diagonal_axes: output axes on which only the diagonal is kept.

  Returns:
    ``nngp(x1, x2, params, **kwargs)`` with the kernel layout of
    :func:`ntk_fn`.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: x @ p
  >>> autontk.nngp_fn(f)(jnp.ones((2, 3)), None, jnp.ones((3, 4))).shape
  (2, 2)
  """
  options = NtkOptions.make(trace_axes, diagonal_axes, None,
                            Implementation.JACOBIAN_CONTRACTION)

  def nngp(x1: PyTree, x2: PyTree | None, params: PyTree,
           kwargs: dict[str, Any]) -> PyTree:
    problem = _problem.build(f, options, x1, x2, params, kwargs)
    o1 = problem.fn(1)(problem.theta)
    o2 = o1 if problem.same_inputs else problem.fn(2)(problem.theta)
    kernels = [(_axes.contract_outer(a, b, ax) / ax.trace_size(a.shape))
               for a, b, ax in zip(o1, o2, problem.axes)]
    return jax.tree.unflatten(problem.out_treedef, kernels)

  return _compiled.CompiledCalls(nngp)


def ntk_vp_fn(f: ApplyFn, x1: PyTree, x2: PyTree | None, params: PyTree,
              **kwargs: Any) -> Callable[[PyTree], PyTree]:
  """Returns ``v -> Θ(x1, x2) · v`` without building Θ.

  Costs about ``N1 + N2`` forward passes per product and the memory of one
  VJP: what iterative solvers (CG, Lanczos) need. Same semantics as
  neural-tangents' ``empirical_ntk_vp_fn``.

  Args:
    f: the network, ``f(params, x, **kwargs)``.
    x1: first batch of inputs.
    x2: second batch, or ``None`` for x1.
    params: the parameters.
    **kwargs: kwargs of ``f``, split as in :func:`ntk_fn`.

  Returns:
    A function taking cotangents shaped like ``f(params, x2)`` and returning
    ``Θ·v`` shaped like ``f(params, x1)``.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: x @ p
  >>> vp = autontk.ntk_vp_fn(f, jnp.ones((2, 3)), None, jnp.ones((3, 4)))
  >>> vp(jnp.ones((2, 4))).shape
  (2, 4)
  """
  options = NtkOptions.make((), (), None, Implementation.NTK_VECTOR_PRODUCTS)
  problem = _problem.build(f, options, x1, x2, params, kwargs)  # validates
  leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
  traced, constants = _compiled.CallProgram.key(treedef, leaves)
  # On the device once, not at every product.
  leaves = [jnp.asarray(v) if isinstance(v, np.ndarray) else v
            for v in leaves]
  out2 = [tuple(o.shape) for o in problem.out2]
  td = problem.out_treedef

  def product(x1, x2, params, kwargs, cotangents):
    call = _problem.build(f, options, x1, x2, params, kwargs)
    return jax.tree.unflatten(td, _vector_product(call, cotangents))

  program = _compiled.CallProgram(product, treedef, traced, constants)

  def vp(cotangents: PyTree) -> PyTree:
    c_leaves, ctd = jax.tree.flatten(cotangents)
    if ctd != td:
      raise ValueError(f"`cotangents` must have the structure of f(params, x2)"
                       f" ({td}); got {ctd}.")
    for i, (c, shape) in enumerate(zip(c_leaves, out2)):
      if np.shape(c) != shape:
        raise ValueError(f"`cotangents` leaf {i} has shape {np.shape(c)}; "
                         f"f(params, x2) has shape {shape}.")
    return program(leaves, c_leaves)

  return vp


def _vector_product(problem: _problem.NtkProblem,
                    cotangents: list[Any]) -> list[jax.Array]:
  """``J(x1) J(x2)ᵀ c`` for cotangents ``c`` of f(params, x2)'s leaves."""
  if not problem.theta:
    return [jnp.zeros(o.shape, o.dtype) for o in problem.out1]
  _, pull = jax.vjp(problem.fn(2), problem.theta)
  (v,) = pull([jnp.asarray(c, o.dtype)
               for c, o in zip(cotangents, problem.out2)])
  _, out = jax.jvp(problem.fn(1), (problem.theta,), (v,))
  return out
