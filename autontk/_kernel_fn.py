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

import dataclasses
from typing import Any, Callable

from autontk import _compiled, _problem
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
    self._calls: dict[Any, Callable[[list[Any]], PyTree]] = {}
    self._programs: dict[Any, _compiled.CallProgram] = {}

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
    _problem.check_inputs_are_arrays(x1, x2)
    return self._require_planner().plan(self, x1, x2, params, kwargs)

  def report(self, x1: PyTree, x2: PyTree | None, params: PyTree,
             **kwargs: Any) -> Any:
    """The planner's :class:`~autontk.CostReport` for these arguments.

    For an explicit implementation the report covers that method (and its
    memory variants) only.
    """
    _problem.check_inputs_are_arrays(x1, x2)
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
    """``jax.stages.Lowered`` of the program that runs ``plan`` on
    arguments shaped like these: what the cost model analyses. It is the
    very program a call then runs, so a compile made while planning is
    reused by the call."""
    leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
    return self._program(plan, treedef, leaves).lower(leaves)

  def compile(self, plan: Plan, x1: PyTree, x2: PyTree | None,
              params: PyTree, kwargs: dict[str, Any]) -> Any:
    """``jax.stages.Compiled`` of the program that runs ``plan`` on these
    arguments; calls with arguments like these then run it (a plan
    compiled while planning is not compiled again by the call)."""
    leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
    return self._program(plan, treedef, leaves).compile(leaves)

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
    # The fast path: one flatten, one key, one dict lookup, then the
    # compiled program. Everything else (validation, planning, splitting
    # constants from traced leaves) happens on a signature's first call.
    leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
    key = _compiled.call_key(treedef, leaves)
    try:
      run = self._calls[key]
    except (KeyError, TypeError):  # new signature, unhashable constant
      run = self._first_call(key, treedef, leaves, x1, x2, params, kwargs)
    return run(leaves)

  def _first_call(self, key: Any, treedef: Any, leaves: list[Any],
                  x1: PyTree, x2: PyTree | None, params: PyTree,
                  kwargs: dict[str, Any]) -> Callable[[list[Any]], PyTree]:
    """Validates and plans a call of a new signature (``key``, see
    :func:`_compiled.call_key`); returns what runs it (remembered for the
    signature's later calls unless a constant is unhashable or the call is
    traced)."""
    plan = self.plan(x1, x2, params, **kwargs)
    run = self._program(plan, treedef, leaves).runner(leaves)
    try:
      if not _compiled.is_traced(leaves):
        self._calls[key] = run
    except TypeError:  # an unhashable constant: no fast path
      pass
    return run

  def execute(self, plan: Plan, x1: PyTree, x2: PyTree | None,
              params: PyTree, **kwargs: Any) -> PyTree:
    """Runs a given plan (compiled once per plan and Python constants)."""
    leaves, treedef = _compiled.flatten(x1, x2, params, kwargs)
    return self._program(plan, treedef, leaves)(leaves)

  def _program(self, plan: Plan, treedef: Any,
               leaves: list[Any]) -> _compiled.CallProgram:
    """The program of ``plan`` for calls with this structure and these
    Python constants (shapes are jit's business)."""
    traced, constants = _compiled.CallProgram.key(treedef, leaves)
    key = (plan, treedef, constants)
    try:
      program = self._programs.get(key)
    except TypeError:  # unhashable constants: a program per call
      key = program = None
    if program is None:
      jit = (self.jit and key is not None and
             not getattr(plan.chunking, "host_loop", False))
      program = _compiled.CallProgram(self._kernels(plan), treedef, traced,
                                      constants, jit)
      if key is not None:
        self._programs[key] = program
    return program

  def _kernels(self, plan: Plan) -> _compiled.CallFn:
    def kernels(x1, x2, params, kwargs) -> PyTree:
      with self.options.precision_scope():
        problem = _problem.build(self.f, self.options, x1, x2, params,
                                 kwargs)
        return problem.unflatten_kernels(plan.execute(problem))
    return kernels
