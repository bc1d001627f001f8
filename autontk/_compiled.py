"""Kernel functions called as users call them: compiled, with a fast path.

A kernel function is called as ``fn(x1, x2, params, **kwargs)``. Its
arguments are flattened once into the leaves of ``(x1, x2, params,
kwargs)``: array leaves are traced by ``jax.jit``; the others (an ``int``
field of an equinox module, ``train=True``) are Python constants ``f`` may
branch on, closed over by the compiled program (one program per value).

:class:`CallProgram` is one such compiled program; :func:`call_key` is what
a repeated call is recognised by (structure, shapes, dtypes, constants), so
that a call whose signature was seen before costs one flatten, one key and
one dict lookup on top of ``jax.jit``'s own dispatch.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _kwargs, _xla_options
from autontk._conv_layout import canonical_convolutions
from autontk._types import CONCRETE_ARRAY, PyTree

CallFn = Callable[..., PyTree]
"""``fn(x1, x2, params, kwargs, *extra) -> result``: what a program
computes."""


_tree_flatten = jax.tree_util.default_registry.flatten


def flatten(x1: PyTree, x2: PyTree | None, params: PyTree,
            kwargs: dict[str, Any]) -> tuple[list[Any], Any]:
  """``(leaves, treedef)`` of ``(x1, x2, params, kwargs)``."""
  return _tree_flatten((x1, x2, params, kwargs))


def call_key(treedef: Any, leaves: list[Any]) -> Hashable:
  """What a repeated call is recognised by: the structure, each array's
  abstract value (shape, dtype, weak type), each Python constant and its
  type (``1``, ``1.0`` and ``True`` are equal as dict keys, not as
  constants of ``f``). A key with an unhashable constant raises
  ``TypeError`` when looked up.

  This runs on every call, so it is kept to the least Python work that
  still tells signatures apart: for a ``jax.Array``, its interned
  ``aval``.
  """
  return (treedef, *[v.aval if type(v) is CONCRETE_ARRAY else _leaf_key(v)
                     for v in leaves])



def _leaf_key(v: Any) -> Any:
  if type(v) in _PYTHON_SCALARS:
    return type(v), v
  aval = getattr(v, "aval", None)
  if aval is not None:
    return aval
  try:
    return v.shape, v.dtype
  except AttributeError:
    return type(v), v


_PYTHON_SCALARS = frozenset({bool, int, float, complex, str, type(None)})
"""Constants recognised without a failed attribute lookup."""


def is_traced(leaves: list[Any]) -> bool:
  """Called under an outer transformation (``jit``, ``vmap``...)."""
  return any(isinstance(v, jax.core.Tracer) for v in leaves)


def traced_mask(treedef: Any, leaves: list[Any]) -> tuple[bool, ...]:
  """Which leaves of ``(x1, x2, params, kwargs)`` are traced.

  Array leaves everywhere; in x1, x2 and params also Python floats (see
  :func:`autontk._kwargs.is_static_param`); kwargs other than arrays are
  Python constants ``f`` may branch on.
  """
  n_kwargs = treedef.children()[3].num_leaves
  n_args = len(leaves) - n_kwargs
  return tuple(not _kwargs.is_static_param(v) if i < n_args else
               _kwargs.is_array_leaf(v) for i, v in enumerate(leaves))


def _cpu_layouts(body: Callable[..., PyTree]) -> Callable[..., PyTree]:
  """``body`` with its convolutions in the CPU backend's fast layout
  where the default backend is a CPU (XLA does it only outside loops; the
  kernels' chunk loops and solvers' iterations would miss it: see
  :mod:`autontk._conv_layout`)."""
  if jax.default_backend() == "cpu":
    return canonical_convolutions(body)
  return body


class CallProgram:
  """``fn`` compiled for one call structure and one set of constants.

  Args:
    fn: what the program computes, ``fn(x1, x2, params, kwargs)``.
    treedef: the structure of ``(x1, x2, params, kwargs)``.
    traced: :func:`traced_mask` of the leaves.
    constants: the leaves that are not traced, in order.
    jit: compile with ``jax.jit`` (else run ``fn`` as it is).

  Call it with the flat leaves of a call: ``program(leaves)``.
  """

  def __init__(self, fn: CallFn, treedef: Any, traced: tuple[bool, ...],
               constants: tuple[Any, ...], jit: bool = True):
    self._fn = fn
    self._treedef = treedef
    self._traced = traced
    self._constants = constants
    self._all_traced = all(traced)
    self._jit = jit
    self._run = (_xla_options.Jitted(_cpu_layouts(self._body)) if jit else
                 self._body)
    self._lowered: dict[Any, Any] = {}
    self._executables: dict[Any, Any] = {}

  @staticmethod
  def key(treedef: Any, leaves: list[Any]) -> tuple[tuple[bool, ...],
                                                      tuple[Any, ...]]:
    """``(traced mask, constants)`` of a call: with the structure, what
    tells one program from another."""
    traced = traced_mask(treedef, leaves)
    return traced, tuple(v for v, t in zip(leaves, traced) if not t)

  def _body(self, traced: list[Any], *extra: Any) -> PyTree:
    it_t, it_c = iter(traced), iter(self._constants)
    leaves = [next(it_t) if t else next(it_c) for t in self._traced]
    x1, x2, params, kwargs = jax.tree.unflatten(self._treedef, leaves)
    return self._fn(x1, x2, params, kwargs, *extra)

  @property
  def all_traced(self) -> bool:
    """Every leaf of a call is an argument of the program (no constant)."""
    return self._all_traced

  def traced_leaves(self, leaves: list[Any]) -> list[Any]:
    if self._all_traced:
      return leaves
    return list(itertools.compress(leaves, self._traced))

  def __call__(self, leaves: list[Any], *extra: Any) -> PyTree:
    """Runs on a call's leaves; ``extra`` arguments (traced) are passed to
    ``fn`` after ``kwargs``."""
    return self._run(self.traced_leaves(leaves), *extra)

  def bind(self, leaves: list[Any]) -> Callable[..., PyTree]:
    """``run(*extra)``: the program on these very leaves, their traced
    part taken out once (a function of fixed arguments called many times,
    as ``ntk_vp_fn``'s product is)."""
    return functools.partial(self._run, self.traced_leaves(leaves))

  def lower(self, leaves: list[Any]) -> Any:
    """``jax.stages.Lowered`` of the program for arguments like ``leaves``
    (memoised per shapes: lowering traces ``f``)."""
    traced = [_abstract(v) if isinstance(v, jax.core.Tracer) else v
              for v in self.traced_leaves(leaves)]
    key = _avals(traced)
    if key not in self._lowered:
      run = self._run if self._jit else _xla_options.Jitted(self._body)
      self._lowered[key] = run.lower(traced)
    return self._lowered[key]

  def compile(self, leaves: list[Any]) -> Any:
    """The compiled executable for arguments like ``leaves``; later calls
    with such arguments run it (see :meth:`runner`) instead of compiling
    the same program again."""
    key = _avals(self.traced_leaves(leaves))
    if key not in self._executables:
      self._executables[key] = self.lower(leaves).compile()
    return self._executables[key]

  def runner(self, leaves: list[Any]) -> Callable[[list[Any]], PyTree]:
    """``run(leaves)`` for calls like ``leaves``, as direct as it can be
    (it runs on every repeated call): the executable compiled for them if
    there is one, else the (jitted) program itself when every leaf is
    traced, else this program."""
    executable = self._executables.get(_avals(self.traced_leaves(leaves)))
    if executable is not None and self._jit:
      return _Executable(self, executable)
    return self._run if self._all_traced else self


class _Executable:
  """A program's executable for one set of argument shapes."""

  def __init__(self, program: CallProgram, executable: Any):
    self._program = program
    self._executable = executable
    self._all_traced = program.all_traced

  def __call__(self, leaves: list[Any]) -> PyTree:
    try:
      return self._executable(leaves if self._all_traced else
                              self._program.traced_leaves(leaves))
    except (TypeError, ValueError):
      # Same shapes and dtypes, other weak types or placement: the jitted
      # program dispatches (and compiles) as jit does.
      return self._program(leaves)


def _avals(leaves: list[Any]) -> tuple:
  return tuple((tuple(np.shape(v)), jnp.result_type(v)) for v in leaves)


def _abstract(v: Any) -> Any:
  return jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v))


class CompiledCalls:
  """``fn(x1, x2, params, **kwargs)`` compiled once per call signature.

  Args:
    fn: ``fn(x1, x2, params, kwargs) -> result``.
    jit: compile (else every call runs ``fn`` as it is).
  """

  def __init__(self, fn: CallFn, jit: bool = True):
    self._fn = fn
    self._jit = jit
    self._calls: dict[Any, CallProgram] = {}

  def __call__(self, x1: PyTree, x2: PyTree | None, params: PyTree,
               **kwargs: Any) -> PyTree:
    leaves, treedef = flatten(x1, x2, params, kwargs)
    key = call_key(treedef, leaves)
    try:
      program = self._calls.get(key)
    except TypeError:  # an unhashable constant: no fast path
      key = program = None
    if program is None:
      traced, constants = CallProgram.key(treedef, leaves)
      program = CallProgram(self._fn, treedef, traced, constants,
                            self._jit and key is not None)
      if key is not None:
        self._calls[key] = program
    return program(leaves)
