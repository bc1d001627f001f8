"""``NtkFn``: the function ``ntk_fn`` returns, which runs plans.

An :class:`NtkFn` holds the network, its NTK options and a *planner*: an
object with ``plan(ntk, x1, x2, params, kwargs) -> Plan`` and
``report(ntk, x1, x2, params, kwargs) -> CostReport`` (see
:class:`autontk._types.Planner`). For an explicit implementation the plan
is that method's; for ``"auto"`` it is the planner's. The planner is handed
in by :func:`autontk.ntk_fn`: this module knows nothing of how plans are
chosen, only how they run (one compiled executable per plan and static
arguments).
"""

from __future__ import annotations

from typing import Any, Callable

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _kwargs, _problem
from autontk._options import Implementation, NtkOptions
from autontk._plan import Plan
from autontk._types import ApplyFn, Planner, PyTree


class NtkFn:
  """The empirical NTK of a network, as returned by :func:`ntk_fn`.

  Call it as ``ntk(x1, x2, params, **kwargs)``. It is a drop-in for the
  function returned by neural-tangents' ``empirical_ntk_fn``.
  """

  def __init__(self, f: ApplyFn, options: NtkOptions, *, jit: bool = True,
               planner: Planner | None = None):
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
            f"implementation={o.implementation.name.lower()!r}, "
            f"{o.describe()})")

  def replace(self, **changes: Any) -> "NtkFn":
    """A new :class:`NtkFn` of the same ``f`` and planner, options changed.

    Args:
      **changes: fields of :class:`autontk._options.NtkOptions`
        (``trace_axes``, ``diagonal_axes``, ``vmap_axes``,
        ``implementation``, ``selection``, ``pseudo_axes``,
        ``precision``), in their canonical (tuple / enum / record) form.
    """
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
    return self._require_planner().plan(self, x1, x2, params, kwargs)

  def report(self, x1: PyTree, x2: PyTree | None, params: PyTree,
             **kwargs: Any) -> Any:
    """The planner's :class:`~autontk.CostReport` for these arguments.

    For an explicit implementation the report covers that method (and its
    memory variants) only.
    """
    return self._require_planner().report(self, x1, x2, params, kwargs)

  @property
  def planner(self) -> Planner | None:
    """The planner behind ``implementation="auto"`` and :meth:`report`."""
    return self._planner

  def _require_planner(self) -> Planner:
    if self._planner is None:
      raise ValueError("This NtkFn has no planner: build it with "
                       "autontk.ntk_fn, or pass `planner=` to NtkFn.")
    return self._planner

  def lower(self, plan: Plan, x1: PyTree, x2: PyTree | None, params: PyTree,
            kwargs: dict[str, Any]) -> Any:
    """``jax.stages.Lowered`` of the executable that runs ``plan`` on
    arguments shaped like these (what the cost model analyses; compiling
    it lands in the caches the call then hits)."""
    dynamic, static_key = _kwargs.split_static(kwargs)
    run = self._executable(plan, x2 is None, static_key)
    return run.lower(_abstract(params), _abstract(x1), _abstract(x2),
                     _abstract(dynamic))

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
      outputs; with ``groups``, ``{group: kernel}``. With ``wrt``, only
      the selected leaves are differentiated.
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
      with self.options.precision_scope():
        problem = _problem.build(self.f, self.options, x1, x2, params, kwargs)
        kernels = plan.execute(problem)
      return problem.unflatten_kernels(kernels)

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
    """``jax.jit(run).lower`` with the same split of ``params``."""
    fn, p_dyn = self._compiled(params)
    if fn is None:
      p_dyn, static_key = _kwargs.split_params(params)
      fn = jax.jit(self._bound(static_key))
    return fn.lower(p_dyn, x1, x2, dynamic)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v))
      if _kwargs.is_array_leaf(v) else v, tree)
