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

from autontk import _axes, _compiled, _problem, adapters
from autontk._kernel_fn import NtkFn
from autontk._options import Implementation, NtkOptions
from autontk._types import ApplyFn, Axes, PyTree, VMapAxes
from autontk.auto.cached import default_planner, make_planner


def ntk_fn(f: ApplyFn | Any, *, trace_axes: Axes = (-1,),
           diagonal_axes: Axes = (), vmap_axes: VMapAxes = None,
           implementation: Implementation | str | int = "auto",
           wrt: Any = None, groups: Any = None,
           pseudo_axes: Axes | None = None, precision: str | None = None,
           jit: bool = True, **auto_options: Any) -> NtkFn:
  """Returns a function computing the empirical NTK ``J(x1) J(x2)ᵀ`` of ``f``.

  A drop-in for neural-tangents' ``empirical_ntk_fn``: same call, same result
  shapes, same values. ``docs/kernels.md`` shows ``wrt``, ``groups``,
  ``pseudo_axes``, ``precision`` and model objects at work.

  Args:
    f: the network, ``f(params, x, **kwargs) -> array or pytree of arrays``;
      or a model object: a flax ``nnx.Module``, an equinox ``Module``, a
      linen ``Module`` with parameters only, a haiku ``hk.transform``
      function, or an :class:`autontk.adapters.Model` (the call then takes
      the parameters in that library's form, see :mod:`autontk.adapters`).
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
    wrt: the parameters the kernel is taken with respect to (``None``: every
      floating-point leaf); the others are held constant. A path pattern
      (``"head/*"``, ``"*/kernel"``) or a list of them, a callable
      ``(path, leaf) -> bool``, or a pytree of booleans that is a prefix of
      ``params`` (see :mod:`autontk.selection`).
    groups: one kernel per parameter group, returned as ``{group: kernel}``
      (the kernels sum to the full kernel): a callable ``path -> name``,
      ``"layer"`` (one group per module) or ``"top"`` (per top-level key).
    pseudo_axes: compute the pseudo-NTK instead: the NTK of f's outputs
      summed over these axes and divided by √(their size), the axes kept
      with size 1 (see :func:`pntk_fn`).
    precision: matmul precision of every contraction, f's included:
      ``"highest"``, ``"high"`` or ``"default"`` (the backend's choice: TF32
      on recent NVIDIA GPUs, bfloat16 passes on TPUs); ``None`` keeps JAX's
      ``jax_default_matmul_precision``. The cost report names it.
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
  >>> k = autontk.ntk_fn(f, groups="top")(jnp.ones((5, 3)), None, p)
  >>> sorted(k), k["v"].shape
  (['v', 'w'], (5, 5))
  """
  options = NtkOptions.make(trace_axes, diagonal_axes, vmap_axes,
                            implementation, wrt=wrt, groups=groups,
                            pseudo_axes=pseudo_axes, precision=precision)
  planner = make_planner(**auto_options) if auto_options else (
      default_planner())
  return NtkFn(adapters.apply_fn(f), options, jit=jit, planner=planner)


def pntk_fn(f: ApplyFn | Any, *, pseudo_axes: Axes = (-1,),
            **options: Any) -> NtkFn:
  """Returns the pseudo-NTK function of ``f``: the NTK of ``Σ_o f_o / √O``.

  The pseudo-NTK (Mohamadi, Bae & Sutherland, ICML 2023) sums the outputs
  over ``pseudo_axes`` (the O logits) before differentiating, so it costs
  about 1/O of the full kernel. Since ``pNTK = (1/O) Σ_{o,o'} Θ_{oo'}``, it
  is the full kernel's mean over logit pairs times O; for wide networks the
  full kernel is close to ``pNTK ⊗ I_O``. Planned, cached and tiled like
  any kernel; ``wrt`` and ``groups`` apply.

  Args:
    f: the network (or a model object), as for :func:`ntk_fn`.
    pseudo_axes: the output axes summed (kept with size 1, so the default
      ``trace_axes=(-1,)`` gives an ``(N1, N2)`` kernel).
    **options: any option of :func:`ntk_fn`.

  Returns:
    An :class:`NtkFn`.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> autontk.pntk_fn(f)(jnp.ones((5, 3)), None, jnp.ones((3, 10))).shape
  (5, 5)
  """
  return ntk_fn(f, pseudo_axes=pseudo_axes, **options)


def nngp_fn(f: ApplyFn | Any, *, trace_axes: Axes = (-1,),
            diagonal_axes: Axes = (),
            precision: str | None = None) -> Callable[..., PyTree]:
  """Returns the empirical NNGP kernel function ``f(x1) f(x2)ᵀ``.

  Same axes semantics and kwargs splitting as :func:`ntk_fn` (and as
  neural-tangents' ``empirical_nngp_fn``).

  Args:
    f: the network, ``f(params, x, **kwargs)``, or a model object as for
      :func:`ntk_fn`.
    trace_axes: output axes summed over and divided by their size.
    diagonal_axes: output axes on which only the diagonal is kept.
    precision: matmul precision, as for :func:`ntk_fn`.

  Returns:
    ``nngp(x1, x2, params, **kwargs)`` with the kernel layout of
    :func:`ntk_fn`.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: x @ p
  >>> autontk.nngp_fn(f)(jnp.ones((2, 3)), None, jnp.ones((3, 4))).shape
  (2, 2)
  """
  options = NtkOptions.make(trace_axes, diagonal_axes, None,
                            Implementation.JACOBIAN_CONTRACTION,
                            precision=precision)
  f = adapters.apply_fn(f)

  def nngp(x1: PyTree, x2: PyTree | None, params: PyTree,
           kwargs: dict[str, Any]) -> PyTree:
    with options.precision_scope():
      problem = _problem.build(f, options, x1, x2, params, kwargs)
      o1 = problem.fn(1)(problem.theta)
      o2 = o1 if problem.same_inputs else problem.fn(2)(problem.theta)
      kernels = [(_axes.contract_outer(a, b, ax) / ax.trace_size(a.shape))
                 for a, b, ax in zip(o1, o2, problem.axes)]
    return jax.tree.unflatten(problem.out_treedef, kernels)

  return _compiled.CompiledCalls(nngp)


def ntk_vp_fn(f: ApplyFn | Any, x1: PyTree, x2: PyTree | None,
              params: PyTree, *, wrt: Any = None,
              pseudo_axes: Axes | None = None, precision: str | None = None,
              **kwargs: Any) -> Callable[[PyTree], PyTree]:
  """Returns ``v -> Θ(x1, x2) · v`` without building Θ.

  Costs about ``N1 + N2`` forward passes per product and the memory of one
  VJP: what iterative solvers (CG, Lanczos) need. Same semantics as
  neural-tangents' ``empirical_ntk_vp_fn``.

  Args:
    f: the network, ``f(params, x, **kwargs)``, or a model object as for
      :func:`ntk_fn`.
    x1: first batch of inputs.
    x2: second batch, or ``None`` for x1.
    params: the parameters.
    wrt: the parameters the kernel is taken with respect to, as for
      :func:`ntk_fn` (so ``f`` cannot take a kwarg named ``wrt``).
    pseudo_axes: the pseudo-NTK's summed output axes, as for
      :func:`ntk_fn` (cotangents are then shaped like its outputs).
    precision: matmul precision, as for :func:`ntk_fn`.
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
  options = NtkOptions.make((), (), None, Implementation.NTK_VECTOR_PRODUCTS,
                            wrt=wrt, pseudo_axes=pseudo_axes,
                            precision=precision)
  f = adapters.apply_fn(f)
  problem = _problem.build(f, options, x1, x2, params, kwargs)  # validates
  leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
  traced, constants = _compiled.CallProgram.key(treedef, leaves)
  # On the device once, not at every product.
  leaves = [jnp.asarray(v) if isinstance(v, np.ndarray) else v
            for v in leaves]
  out2 = [tuple(o.shape) for o in problem.out2]
  td = problem.out_treedef

  def product(x1, x2, params, kwargs, cotangents):
    # Runs when jax.jit traces: once per cotangent structure and shapes, so
    # a product call is jit's own dispatch and nothing more.
    c_leaves, ctd = jax.tree.flatten(cotangents)
    if ctd != td:
      raise ValueError(f"`cotangents` must have the structure of f(params, x2)"
                       f" ({td}); got {ctd}.")
    _check_cotangent_shapes(c_leaves, out2)
    with options.precision_scope():
      call = _problem.build(f, options, x1, x2, params, kwargs)
      return jax.tree.unflatten(td, _vector_product(call, c_leaves))

  return _compiled.CallProgram(product, treedef, traced, constants).bind(
      leaves)


def _check_cotangent_shapes(c_leaves: list[Any],
                            shapes: list[tuple[int, ...]]) -> None:
  """Raises on a cotangent leaf whose shape is not its output leaf's."""
  for i, (c, shape) in enumerate(zip(c_leaves, shapes)):
    if np.shape(c) != shape:
      raise ValueError(f"`cotangents` leaf {i} has shape {np.shape(c)}; "
                       f"f(params, x2) has shape {shape}.")


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
