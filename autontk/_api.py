"""Public entry points: ``ntk_fn``, ``nngp_fn`` and ``ntk_vp_fn``."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _axes, _kwargs, _problem
from autontk._options import Implementation, NtkOptions
from autontk._plan import Plan
from autontk._types import ApplyFn, Axes, PyTree, VMapAxes


class NtkFn:
  """The empirical NTK of a network, as returned by :func:`ntk_fn`.

  Call it as ``ntk(x1, x2, params, **kwargs)``. It is a drop-in for the
  function returned by neural-tangents' ``empirical_ntk_fn``.
  """

  def __init__(self, f: ApplyFn, options: NtkOptions, *, jit: bool = True,
               planner: Any = None):
    if not callable(f):
      raise TypeError(f"`f` must be callable as f(params, x, **kwargs); got "
                      f"{type(f).__name__}.")
    self.f = f
    self.options = options
    self.jit = jit
    self._planner = planner
    self._executables: dict[Any, Callable] = {}

  def __repr__(self) -> str:
    o = self.options
    return (f"NtkFn(f={getattr(self.f, '__name__', self.f)!r}, "
            f"trace_axes={o.trace_axes}, diagonal_axes={o.diagonal_axes}, "
            f"vmap_axes={o.vmap_axes!r}, "
            f"implementation={o.implementation.name.lower()!r})")

  def replace(self, **changes: Any) -> "NtkFn":
    """A new :class:`NtkFn` of the same ``f`` and planner, options changed.

    Args:
      **changes: fields of :class:`autontk._options.NtkOptions`
        (``trace_axes``, ``diagonal_axes``, ``vmap_axes``,
        ``implementation``), in their canonical (tuple / enum) form.
    """
    import dataclasses
    return NtkFn(self.f, dataclasses.replace(self.options, **changes),
                 jit=self.jit, planner=self._planner)

  # Planning -----------------------------------------------------------------

  def problem(self, x1: PyTree, x2: PyTree | None, params: PyTree,
              **kwargs: Any) -> _problem.NtkProblem:
    """The validated :class:`NtkProblem` of one call (raises on bad input)."""
    return _problem.build(self.f, self.options, x1, x2, params, kwargs)

  def plan(self, x1: PyTree, x2: PyTree | None, params: PyTree,
           **kwargs: Any) -> Plan:
    """The :class:`Plan` this function uses for these arguments."""
    impl = self.options.implementation
    if impl is not Implementation.AUTO:
      return Plan(impl)
    if self._planner is None:
      from autontk import _auto
      return _auto.default_plan(self, x1, x2, params, kwargs)
    return self._planner(self, x1, x2, params, kwargs)

  def report(self, x1: PyTree, x2: PyTree | None, params: PyTree,
             **kwargs: Any):
    """The planner's :class:`CostReport` for these arguments (see docs)."""
    from autontk import _auto
    return _auto.report(self, x1, x2, params, kwargs)

  # Execution ----------------------------------------------------------------

  def __call__(self, x1: PyTree, x2: PyTree | None, params: PyTree,
               **kwargs: Any) -> PyTree:
    """Computes the empirical NTK.

    Args:
      x1: first batch of inputs (pytree), e.g. shape ``(N1, ...)``.
      x2: second batch, or ``None`` for ``x2 = x1`` (work on x1 is reused).
      params: the parameters (pytree) the NTK is taken with respect to.
        Floating-point leaves are differentiated; integer, boolean and key
        leaves are treated as constants, and Python values other than
        floats (an ``int`` or ``bool`` field of an equinox module) are
        passed to ``f`` as themselves, never traced.
      **kwargs: keyword arguments of ``f``, split between x1 and x2 as in
        neural-tangents (``rng`` is split, 2-tuples are split, the rest is
        shared).

    Returns:
      The kernel, shape ``zip(f(x1).shape, f(x2).shape)`` with traced axes
      removed and diagonal axes kept once (e.g. ``(N1, N2)`` for logits with
      the default ``trace_axes=(-1,)``); a pytree of kernels for pytree
      outputs.
    """
    plan = self.plan(x1, x2, params, **kwargs)
    return self.execute(plan, x1, x2, params, **kwargs)

  def execute(self, plan: Plan, x1: PyTree, x2: PyTree | None,
              params: PyTree, **kwargs: Any) -> PyTree:
    """Runs a given plan (compiled once per plan and static arguments)."""
    dynamic, static_key = _kwargs.split_static(kwargs)
    run = self._executable(plan, x2 is None, static_key)
    return run(params, x1, x2, dynamic)

  def _executable(self, plan: Plan, x2_none: bool, static_key) -> Callable:
    try:
      key = (plan, x2_none, static_key)
      hash(key)
    except TypeError:
      key = None  # unhashable Python kwargs: run without caching or jit
    if key is not None and key in self._executables:
      return self._executables[key]

    def run(params, x1, x2, dynamic):
      kwargs = _kwargs.merge_static(dynamic, static_key)
      problem = _problem.build(self.f, self.options, x1, x2, params, kwargs)
      kernels = plan.execute(problem)
      return jax.tree.unflatten(problem.out_treedef, kernels)

    # A host-loop chunking runs its own jitted block kernel per block.
    host_loop = getattr(plan.chunking, "host_loop", False)
    fn = _Executable(run, self.jit and key is not None and not host_loop)
    if key is not None:
      self._executables[key] = fn
    return fn


class _Executable:
  """``run(params, x1, x2, dynamic)``, jitted with Python params leaves static.

  Non-array, non-float leaves of ``params`` (an ``int`` or ``bool`` field of
  an equinox module, a string) are constants ``f`` may branch or loop on:
  they are closed over, one compiled program per value, instead of being
  traced by ``jax.jit``. ``lower`` is ``jax.jit(run).lower`` with the same
  split (the planner analyses what would run).
  """

  def __init__(self, run: Callable, jit: bool):
    self._run = run
    self._jit = jit
    self._jitted: dict[Any, Callable] = {}

  def _bound(self, static_key) -> Callable:
    def bound(p_dyn, x1, x2, dynamic):
      return self._run(_kwargs.merge_static(p_dyn, static_key), x1, x2,
                       dynamic)
    return bound

  def _compiled(self, params: PyTree) -> tuple[Callable | None, list[Any]]:
    """``(jitted, traced leaves)``; ``None`` for unhashable constants."""
    p_dyn, static_key = _kwargs.split_params(params)
    try:
      hash(static_key)
    except TypeError:
      return None, p_dyn
    fn = self._jitted.get(static_key)
    if fn is None:
      fn = self._jitted[static_key] = jax.jit(self._bound(static_key))
    return fn, p_dyn

  def __call__(self, params, x1, x2, dynamic):
    fn, p_dyn = self._compiled(params) if self._jit else (None, None)
    if fn is None:  # not jitted (as for unhashable kwargs)
      return self._run(params, x1, x2, dynamic)
    return fn(p_dyn, x1, x2, dynamic)

  def lower(self, params, x1, x2, dynamic):
    fn, p_dyn = self._compiled(params)
    if fn is None:
      p_dyn, static_key = _kwargs.split_params(params)
      fn = jax.jit(self._bound(static_key))
    return fn.lower(p_dyn, x1, x2, dynamic)


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
      ``memory_budget=0.25`` (see :class:`autontk.planner.PlannerOptions`
      and docs/cost_report.md); ``tune=True`` (or a
      :class:`autontk.tuner.TuneOptions`) times the best candidates on the
      device on first use; ``plan_cache=autontk.PlanCache(dir)`` or
      ``False`` chooses the persistent plan cache (docs/cli.md).

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
  planner = None
  if auto_options:
    from autontk import _auto
    planner = _auto.make_planner(**auto_options)
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
           **kwargs: Any) -> PyTree:
    problem = _problem.build(f, options, x1, x2, params, kwargs)
    o1 = problem.fn(1)(problem.theta)
    o2 = o1 if problem.same_inputs else problem.fn(2)(problem.theta)
    kernels = [(_axes.contract_outer(a, b, ax) / ax.trace_size(a.shape))
               for a, b, ax in zip(o1, o2, problem.axes)]
    return jax.tree.unflatten(problem.out_treedef, kernels)

  return nngp


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
  problem = _problem.build(f, options, x1, x2, params, kwargs)
  f1, f2 = problem.fn(1), problem.fn(2)
  theta = problem.theta
  td = problem.out_treedef

  def vp(cotangents: PyTree) -> PyTree:
    leaves, ctd = jax.tree.flatten(cotangents)
    if ctd != td:
      raise ValueError(f"`cotangents` must have the structure of f(params, x2)"
                       f" ({td}); got {ctd}.")
    for i, (c, o) in enumerate(zip(leaves, problem.out2)):
      if tuple(np.shape(c)) != tuple(o.shape):
        raise ValueError(f"`cotangents` leaf {i} has shape {np.shape(c)}; "
                         f"f(params, x2) has shape {tuple(o.shape)}.")
    if not theta:
      return jax.tree.unflatten(
          td, [jnp.zeros(o.shape, o.dtype) for o in problem.out1])
    _, pull = jax.vjp(f2, theta)
    (v,) = pull([jnp.asarray(c, o.dtype) for c, o in zip(leaves, problem.out2)])
    _, out = jax.jvp(f1, (theta,), (v,))
    return jax.tree.unflatten(td, out)

  return vp


